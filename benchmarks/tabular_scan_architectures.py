"""Issue 19, tables: the tabular scan's default on more seeds and on architectures we did not write.

`tabular_checklist.py` measures the scan on our own `mlp` and report seeds 1-3. A user's table
model is rarely ours, so this script scans, per table and seed, three kinds of suspect, each
trained by its own recipe outside poisonguard, as a user would:

- `mlp`: the built-in (10 epochs of Adam, as the checklist trains it);
- `residual`: a user's model with its own scaling buffers, a LayerNorm/GELU residual block,
  trained 15 epochs with Adam 3e-3;
- `batchnorm`: a user's model with BatchNorm, LeakyReLU and dropout, trained 20 epochs with SGD
  and momentum (fixed before any result with it was seen).

The user models live in `user_table_models.py`, as a user's `--arch file.py:build` would. Each
gets a backdoored copy (Tabdoor, 3 features at their maximum, 5% of rows, dirty label, target
the minority class: the checklist's attack) and a clean copy (another seed). Both are judged by
the tabular default verdict (`reference_contrast`, 8 references on 25% of the training part,
calibrated, FPR 0.05) with two kinds of references:

- `own`: what `scan` now trains for a weights file loaded with `--arch`: the suspect's own code
  re-initialised, its buffers (the owner's scaling) kept, trained by poisonguard's table recipe
  (`detect.calibration.ReferenceArch`);
- `mlp`: the built-in mlp standing in (what `scan` trains for TorchScript/ONNX files, and what
  it trained for every user architecture before session 17).

Also printed: a clean `mlp` trained on another random quarter of the training part (as many
rows as a reference; about a quarter of them are the references' too), which separates "the
suspect saw other data" from "it saw more data". Seeds 4-6 were looked at in session 12;
seeds 7-9 were first run in session 17, after the change.

    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/tabular_scan_architectures.py --seeds 4,5,6,7,8,9
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tabular_checklist import TARGET, run_resumable  # noqa: E402
from user_table_models import batchnorm, residual  # noqa: E402

USER_MODELS = Path(__file__).resolve().parent / "user_table_models.py"


def _user_fit(model: nn.Module, data, *, epochs: int, optimiser, batch: int, seed: int) -> nn.Module:
    """A plain PyTorch loop, as a user writes it (not poisonguard's `fit`)."""
    g = torch.Generator().manual_seed(seed)
    x, y = data.x.float(), data.y
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch):
            idx = order[i:i + batch]
            if len(idx) < 2:  # batch norm needs two rows
                continue
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            optimiser.step()
    return model.eval()


def train_suspect(kind: str, data, seed: int) -> nn.Module:
    from poisonguard.models import build_model
    from poisonguard.train import fit

    if kind == "mlp":
        model = build_model("mlp", num_classes=data.num_classes, input_shape=data.input_shape, seed=seed)
        return fit(model, data, epochs=10, batch_size=64, seed=seed, device="cpu")
    torch.manual_seed(seed)
    x = data.x.float()
    model = (residual if kind == "residual" else batchnorm)(data.num_classes, x.shape[1])
    with torch.no_grad():  # the owner's scaling, set from the data it trains on
        for buffer, value in zip(model.buffers(), (x.mean(0), x.std(0).clamp_min(1e-3))):
            buffer.copy_(value)
    if kind == "residual":
        return _user_fit(model, data, epochs=15, optimiser=torch.optim.Adam(model.parameters(), 3e-3), batch=64, seed=seed)
    return _user_fit(model, data, epochs=20, optimiser=torch.optim.SGD(model.parameters(), 0.05, momentum=0.9),
                     batch=128, seed=seed)


def run_case(table: str, seed: int, kinds: list[str], folder: Path) -> list[dict]:
    from poisonguard.attacks import poison_dataset
    from poisonguard.attacks.tabular import tabular_trigger
    from poisonguard.data import load_data, per_class_subset
    from poisonguard.data.example_tables import export_table
    from poisonguard.detect.calibration import ReferenceArch, calibrate, train_references
    from poisonguard.detect.verdict import TABULAR_METHODS, scan_verdict
    from poisonguard.train import evaluate

    path, label = export_table(table, folder)
    splits = load_data(str(path), label_column=label, seed=seed)
    trigger = tabular_trigger(splits.train, target=TARGET[table], seed=seed)
    poisoned = poison_dataset(splits.train, trigger, rate=0.05, seed=seed).data
    clean = per_class_subset(splits.train, fraction=0.25, seed=seed)

    def references(arch) -> tuple:
        t = time.perf_counter()
        refs = train_references(clean, architecture=arch, n_models=8, seed=seed, device="cpu")
        cal = calibrate(clean, architecture=arch, source="benchmark", methods=list(TABULAR_METHODS), n_models=8,
                        seed=seed, device="cpu", models=refs, use_cache=False)
        return refs, cal, round(time.perf_counter() - t, 1)

    def own(kind: str, suspect) -> tuple:
        """What `scan --arch user_table_models.py:KIND` trains: the suspect's code, its buffers kept."""
        if kind == "mlp":
            return builtin
        return references(ReferenceArch(f"{USER_MODELS}:{kind}", kwargs={"num_classes": clean.num_classes, "width": int(clean.input_shape[0])},
                                        suspect=suspect))

    builtin = references("mlp")

    def judge(model, refs_cal) -> dict:
        refs, cal, seconds = refs_cal
        v = scan_verdict(model, clean, methods=list(TABULAR_METHODS), calibration=cal, references=refs, seed=seed,
                         device="cpu")
        index = {e["class"]: e["statistic"] for e in v.evidence}
        return {"flagged": v.backdoored, "targets": list(v.targets), "index": max(index.values()),
                "target_index": index[TARGET[table]], "threshold": v.evidence[0]["threshold"],
                "sizes": [round(float(s), 3) for s in v.detections[0].mask_l1], "calibration_s": seconds}

    rows = []
    for kind in kinds:
        backdoored, clean_model = train_suspect(kind, poisoned, seed), train_suspect(kind, splits.train, 100 + seed)
        ev_bd, ev_clean = evaluate(backdoored, splits.test, trigger), evaluate(clean_model, splits.test, trigger)
        for refs_name in ("own", "mlp") if kind != "mlp" else ("own",):
            def refs_for(model):
                return own(kind, model) if refs_name == "own" else builtin
            rows.append({"table": table, "seed": seed, "suspect": kind, "references": refs_name,
                         "backdoored": {"accuracy": ev_bd.clean_accuracy, "asr": ev_bd.attack_success_rate,
                                        **judge(backdoored, refs_for(backdoored))},
                         "clean": {"accuracy": ev_clean.clean_accuracy, "asr": ev_clean.attack_success_rate,
                                   **judge(clean_model, refs_for(clean_model))}})
    other = per_class_subset(splits.train, fraction=0.25, seed=seed + 777)  # another quarter of the rows
    rows.append({"table": table, "seed": seed, "suspect": "mlp, another quarter of the rows", "references": "own",
                 "clean": judge(train_suspect("mlp", other, 100 + seed), builtin)})
    return rows


def summarise(rows: list[dict]) -> list[str]:
    lines = ["| table | seed | suspect | references | backdoored: ASR / found (target index; threshold) | "
             "clean: flagged (largest index) |", "|---|---|---|---|---|---|"]
    for r in rows:
        bd, cl = r.get("backdoored"), r["clean"]
        found = (f"{bd['asr']:.3f} / {'yes' if bd['flagged'] and bd['targets'] == [TARGET[r['table']]] else 'NO'} "
                 f"({bd['target_index']:.1f}; {bd['threshold']:.2f})") if bd else "-"
        lines.append(f"| {r['table']} | {r['seed']} | {r['suspect']} | {r['references']} | {found} | "
                     f"{'FLAGGED' if cl['flagged'] else 'no'} ({cl['index']:.2f}) |")
    for kind, refs in sorted({(r["suspect"], r["references"]) for r in rows}):
        for seeds in sorted({r["seed"] <= 6 for r in rows}, reverse=True):
            mine = [r for r in rows if (r["suspect"], r["references"]) == (kind, refs) and (r["seed"] <= 6) == seeds]
            bd = [r for r in mine if r.get("backdoored")]
            found = sum(r["backdoored"]["flagged"] and r["backdoored"]["targets"] == [TARGET[r["table"]]] for r in bd)
            lines.append(f"{kind}, {refs} references, seeds {'4-6' if seeds else '7-9'}: found {found}/{len(bd)}; "
                         f"clean flagged {sum(r['clean']['flagged'] for r in mine)}/{len(mine)}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", default="fair,randhie")
    parser.add_argument("--seeds", default="4,5,6,7,8,9")
    parser.add_argument("--suspects", default="mlp,residual,batchnorm")
    parser.add_argument("--results", default="benchmarks/results/issue-19-tabular-architectures-own-references.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    suspects = args.suspects.split(",")
    rows = run_resumable(args.results, args.tables, args.seeds,
                         lambda table, seed, folder: run_case(table, seed, suspects, folder))
    print("\n".join(summarise(sorted(rows, key=lambda r: (r["table"], r["seed"], r["suspect"])))))


if __name__ == "__main__":
    main()
