"""The full format conformance matrix (issue 15): 5 architectures x 6 formats x 10 commands.

Each cell runs the command in-process through the CLI on tiny data (8x8 images, 4 classes,
200 samples in an .npz, budgets of one epoch or a few steps; see tests/models/conformance.py),
checks its report and exit code (checklist: `--quick` with scan,repair,certify,privacy; CI runs
repair,certify), and for repair/checklist that the model written back loads
and gives the repaired module's outputs to 1e-5, then `evaluate`s it. Prints seconds per
format x command (mean over the architectures) as a markdown table. Resumable: finished cells
are kept in --cache/cells.json.

    PYTHONPATH=src python benchmarks/formats_matrix.py --cache /tmp/fm [--formats pt2,onnx] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "models"))
import conformance as C  # noqa: E402


def table(cells: dict) -> str:
    lines = ["| format | " + " | ".join(C.COMMANDS) + " |", "|---|" + "---|" * len(C.COMMANDS)]
    for fmt in C.FORMATS:
        row = []
        for cmd in C.COMMANDS:
            runs = [v for k, v in cells.items() if k.split("/")[1:] == [fmt, cmd]]
            ok = [r["seconds"] for r in runs if r["ok"]]
            fails = len(runs) - len(ok)
            text = f"{sum(ok) / len(ok):.2f}" if ok else "-"
            row.append(text + (f" ({fails} failed)" if fails else "") + ("" if len(runs) == len(C.ARCHS) else f" [{len(runs)}/5]"))
        lines.append(f"| {fmt} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--formats", default=",".join(C.FORMATS))
    parser.add_argument("--archs", default=",".join(C.ARCHS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ci-checklist", action="store_true",
                        help="checklist with the CI's stage subset (repair,certify) instead of every stage")
    args = parser.parse_args()
    if not args.ci_checklist:
        # Every stage but federated, which trains its own clients' models from scratch (nothing of
        # the input model's format) and needs >= 250 samples for ten clients.
        C.COMMANDS["checklist"] = ["checklist", "--quick", "--stages", "scan,repair,certify,privacy"]
    torch.set_num_threads(args.threads)
    from poisonguard import utils

    utils.QUIET = True
    logging.disable(logging.WARNING)
    args.cache.mkdir(parents=True, exist_ok=True)
    store = args.cache / "cells.json"
    cells = json.loads(store.read_text()) if store.is_file() else {}
    data = C.make_data(args.cache / "d.npz")
    models: dict = {}
    for arch in args.archs.split(","):
        for fmt in args.formats.split(","):
            for cmd in C.COMMANDS:
                key = f"{arch}/{fmt}/{cmd}"
                if key in cells:
                    continue
                start = time.perf_counter()
                try:
                    seconds = C.Case(arch, fmt, cmd, args.cache, data, models).run()
                    cells[key] = {"ok": True, "seconds": round(seconds, 3)}
                except Exception as exc:  # a failing cell is a result to record, not a crash
                    cells[key] = {"ok": False, "seconds": round(time.perf_counter() - start, 3),
                                  "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                store.write_text(json.dumps(cells, indent=1))
                print(key, cells[key], flush=True, file=sys.stderr)
    print(table(cells))
    failed = {k: v["error"] for k, v in cells.items() if not v["ok"]}
    print(f"\n{len(cells) - len(failed)} of {len(cells)} cells passed" + (f"; failed: {failed}" if failed else ""))


if __name__ == "__main__":
    main()
