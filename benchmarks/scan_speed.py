"""Issue 16: wall time of the default `poisonguard scan` on the 2-core machine, after calibration.

Two models: a 10-class MNIST CNN of the detection zoo (benchmarks/detect_zoo.py) and a
CIFAR-10 ResNet-20 (trained here once on a 5,000-image CIFAR subset, cached: the scan's cost
does not depend on how well the model learnt). Both run the default method set on `--data`
(MNIST 5k / CIFAR-10, the scan's 5% share capped at 500 images). The MNIST CNN is scanned twice
with `--calibration auto`: the first run trains and scans the reference models unless their
cache exists (the calibration's cost, reported apart), the second reads the cache (the scan's
cost). The ResNet-20 is scanned with `--calibration none` unless `--calibrate-cifar`: the
methods run the same either way, and its calibration (4 ResNet-20 references trained and
scanned) takes longer than this script is meant to. Goals: MNIST CNN <= 60 s, CIFAR-10
ResNet-20 <= 5 min after calibration.

    PYTHONPATH=src python benchmarks/scan_speed.py [--threads 2] [--skip-cifar] [--skip-mnist]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "scan-speed"
MNIST_MODEL = ROOT / ".cache" / "detect-zoo" / "patch_s4_bottom-right_seed10" / "model.pt"


def resnet20_cifar(threads: int) -> Path:
    """A CIFAR-10 ResNet-20 trained 2 epochs on 5,000 training images (cached)."""
    import torch

    from poisonguard.data import load_data, per_class_subset
    from poisonguard.models import build_model, save_model
    from poisonguard.train import fit

    path = CACHE / "resnet20" / "model.pt"
    if path.is_file():
        return path
    torch.set_num_threads(threads)
    splits = load_data("cifar10")
    train = per_class_subset(splits.train, per_class=500, seed=0)
    model = fit(build_model("resnet20", num_classes=10, input_shape=splits.input_shape, seed=0), train, epochs=2,
                batch_size=128, seed=0, device="cpu")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, path, arch="resnet20", classes=splits.classes, input_shape=splits.input_shape)
    return path


def timed_scan(model: Path, data: str, out: Path, threads: int, calibration: str = "auto") -> tuple[float, dict]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "poisonguard", "scan", str(model), "--data", data, "--out", str(out),
                           "--calibration", calibration, "--exit-zero", "--force", "--quiet"], env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"scan failed: {proc.stderr.strip()[-400:]}")
    return seconds, json.loads((out / "report.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-cifar", action="store_true")
    ap.add_argument("--skip-mnist", action="store_true")
    ap.add_argument("--calibrate-cifar", action="store_true", help="also train and scan the ResNet-20 references")
    args = ap.parse_args()
    cases = [] if args.skip_mnist else [("MNIST CNN (zoo)", MNIST_MODEL, "mnist5k", 60.0, "auto")]
    if not args.skip_cifar:
        cases.append(("CIFAR-10 ResNet-20", resnet20_cifar(args.threads), "cifar10", 300.0,
                      "auto" if args.calibrate_cifar else "none"))
    print(f"{'model':20s} {'first run s':>11s} {'calibration s':>13s} {'scan s':>8s} {'goal s':>7s}  methods' own seconds, clean images")
    for name, model, data, goal, calibration in cases:
        first, report = timed_scan(model, data, CACHE / "first", args.threads, calibration)
        # Uncalibrated, the first run is already the scan's cost: nothing is cached between runs.
        again, report = (first, report) if calibration == "none" else timed_scan(model, data, CACHE / "again",
                                                                                 args.threads, calibration)
        cal = report.get("calibration", {})
        methods = {d["method"]: round(d["seconds"], 1) for d in report.get("detections", [])} or report.get("scan", {})
        scan = report.get("scan", {})
        print(f"{name:20s} {first:11.1f} {cal.get('seconds', float('nan')):13.1f} {again:8.1f} {goal:7.0f}  "
              f"{methods}, {scan.get('clean_images')} (capped from {scan.get('clean_images_capped_from')})", flush=True)


if __name__ == "__main__":
    main()
