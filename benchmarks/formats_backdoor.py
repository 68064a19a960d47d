"""Backdoor removal on models saved in graph formats (issue 15): TorchScript, ONNX, .pt2.

A BadNets mnist_cnn (3x3 white patch, target 0, 10% of MNIST 5k poisoned, 8 epochs; the
model of benchmarks/repair_mnist.py) is saved as a state dict and exported to TorchScript
(traced), ONNX (opset 16) and torch.export. Each file goes through
`poisonguard repair FILE --method M --trigger T` (5% clean data, the methods' defaults, the
same budgets as for the built-in architecture), and the file written back (DIR/model.<ext>)
is scored with `poisonguard evaluate` on the 1,000 test images. Goal: attack success rate
<= 5% and <= 3 points of clean accuracy lost.

    PYTHONPATH=src python benchmarks/formats_backdoor.py --cache /tmp/fb [--seed 0] [--methods fine-pruning,refit] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
import time
import warnings
from pathlib import Path

import torch

from poisonguard.cli import main as cli

FORMATS = {"state_dict": "model.pt", "torchscript": "model_ts.pt", "onnx": "model.onnx", "torch.export": "model.pt2"}
METHODS = ("fine-pruning", "refit", "wild", "unlearn")


def run(argv: list[str]) -> tuple[int, dict]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli(argv)
    lines = [line for line in out.getvalue().splitlines() if line.startswith("{")]
    return rc, json.loads(lines[-1]) if lines else {}


def prepare(cache: Path, seed: int = 0) -> Path:
    """Train the backdoored model once (CLI `attack`), then export it to every format beside it."""
    from poisonguard.models import load_model

    src = cache / "badnets"
    if not (src / "model.pt").is_file():
        rc, _ = run(["attack", "badnets", "--data", "mnist5k", "--target", "0", "--rate", "0.1", "--epochs", "8",
                     "--seed", str(seed), "--out", str(src), "--quiet"])
        assert rc == 0
    model = load_model(src / "model.pt").model.eval()
    example = torch.rand(2, 1, 28, 28)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        for fmt, name in FORMATS.items():
            folder = cache / fmt.replace(".", "_")
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            if path.is_file() or fmt == "state_dict":
                continue
            if fmt == "torchscript":
                torch.jit.save(torch.jit.trace(model, example), str(path))
            elif fmt == "onnx":
                torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=16, input_names=["x"],
                                  output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
            else:
                torch.export.save(torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},)),
                                  str(path))
    return src


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="seed of the backdoored model's training")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    from poisonguard import utils

    utils.QUIET = True
    src = prepare(args.cache, args.seed)
    trigger = str(src / "trigger.npz")
    store = args.cache / "results.json"
    results = json.loads(store.read_text()) if store.is_file() else {}
    for fmt in args.formats.split(","):
        path = src / "model.pt" if fmt == "state_dict" else args.cache / fmt.replace(".", "_") / FORMATS[fmt]
        rc, before = run(["evaluate", str(path), "--data", "mnist5k", "--trigger", trigger, "--quiet"])
        for method in args.methods.split(","):
            key = f"{fmt}/{method}"
            if key in results:
                continue
            out = args.cache / "repaired" / f"{fmt.replace('.', '_')}-{method}"
            start = time.perf_counter()
            rc, rep = run(["repair", str(path), "--data", "mnist5k", "--method", method, "--trigger", trigger,
                           "--out", str(out), "--quiet"])
            seconds = time.perf_counter() - start
            written = next(out.glob("model.*"), None) if rc == 0 else None
            after = run(["evaluate", str(written), "--data", "mnist5k", "--trigger", trigger, "--quiet"])[1] if written else {}
            results[key] = {"rc": rc, "file": written.name if written else None, "seconds": round(seconds, 1),
                            "acc_before": before.get("clean_accuracy"), "asr_before": before.get("attack_success_rate"),
                            "acc_after": after.get("clean_accuracy"), "asr_after": after.get("attack_success_rate"),
                            "in_process_after": rep.get("after")}
            store.write_text(json.dumps(results, indent=1))
            print(key, results[key], file=sys.stderr, flush=True)
    print("| format | method | written | acc before | acc after (re-loaded) | drop (pts) | ASR before | ASR after (re-loaded) | seconds | ok |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    ok_count = 0
    for key, r in results.items():
        fmt, method = key.split("/")
        if r["acc_after"] is None:
            print(f"| {fmt} | {method} | - | {r['acc_before']} | failed (exit {r['rc']}) | | | | {r['seconds']} | no |")
            continue
        drop = 100 * (r["acc_before"] - r["acc_after"])
        ok = r["asr_after"] <= 0.05 and drop <= 3
        ok_count += ok
        print(f"| {fmt} | {method} | {r['file']} | {r['acc_before']:.3f} | {r['acc_after']:.3f} | {drop:.1f} | "
              f"{r['asr_before']:.3f} | {r['asr_after']:.3f} | {r['seconds']} | {'**yes**' if ok else 'no'} |")
    print(f"\n{ok_count} of {len(results)} cells meet ASR <= 5% and <= 3 points lost")


if __name__ == "__main__":
    main()
