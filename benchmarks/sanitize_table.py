"""Markdown tables of the cached sanitize benchmark rows (sanitize_benchmark.py / sanitize_cifar.py --cache).

    python benchmarks/sanitize_table.py /tmp/poisonguard-sanitize-bench-gate
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DEFAULT = "default"
INDEX_ONLY = "default (index gate)"


def _f(value, digits=3):
    return "—" if value is None else f"{value:.{digits}f}"


def main() -> None:
    rows = [json.loads(p.read_text()) for p in sorted(Path(sys.argv[1]).glob("*.json"))]
    rows = [r for r in rows if "methods" in r]
    rows.sort(key=lambda r: (r["attack"] == "clean", r["attack"], r["rate"], r["seed"]))
    print("| attack | rate | seed | poisoned | ASR of the model sanitize trained | default verdict | flagged | TPR | FPR "
          "| top index / held-out z | index gate alone: verdict, TPR | retrained: clean acc | retrained: ASR | CPU s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        d, i, rt = r["methods"][DEFAULT], r["methods"][INDEX_ONLY], r.get("retrain", {})
        verdict = f"{d['verdict']} {d['targets']}" if d["targets"] else d["verdict"]
        tpr = "—" if r["attack"] == "clean" else _f(d["tpr"])
        print(f"| {r['attack']} | {r['rate']} | {r['seed']} | {r['poisoned']} | {_f(r.get('poisoned_model_asr'))} | {verdict} "
              f"| {d['flagged']} | {tpr} | {d['fpr']:.4f} | {d['top_index']:.1f} / {_f(d['top_heldout'], 1)} "
              f"| {i['verdict']}, {'—' if r['attack'] == 'clean' else _f(i['tpr'])} | {_f(rt.get('clean_accuracy'))} "
              f"| {_f(rt.get('attack_success_rate'))} | {r['seconds']['cpu_all_methods']:.0f} |")
    print()
    print("| attack | rate | seed | methods | verdict | flagged | TPR | FPR | AUC |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        for name, m in r["methods"].items():
            if name in (DEFAULT, INDEX_ONLY):
                continue
            print(f"| {r['attack']} | {r['rate']} | {r['seed']} | {name} | {m['verdict']} | {m['flagged']} "
                  f"| {'—' if r['attack'] == 'clean' else _f(m['tpr'])} | {m['fpr']:.4f} | {_f(m.get('auc'))} |")


if __name__ == "__main__":
    main()
