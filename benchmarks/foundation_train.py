"""Foundation figures (issue 2): train a BadNets model the way `poisonguard attack` does, time it.

    python benchmarks/foundation_train.py                       # MNIST 5k, mnist_cnn, BadNets 3x3 at 10%
    python benchmarks/foundation_train.py --cifar --epochs 1 --limit 2000   # CPU smoke of PreActResNet-18
    python benchmarks/foundation_train.py --demo                # also time `poisonguard demo` end to end

Prints clean accuracy, attack success rate (test images whose label is not the target) and
seconds, plus the seeds, so a run can be repeated. The CIFAR run uses BackdoorBench's
setting (PreActResNet-18, BadNets 3x3 at 10%, SGD + crop/flip); on CPU only a few epochs on
a subset fit, which checks the pipeline, not the final accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from poisonguard import utils
from poisonguard.attacks import badnets_trigger, poison_dataset
from poisonguard.data import load_data, per_class_subset
from poisonguard.models import build_model
from poisonguard.train import FitConfig, evaluate, fit


def train_badnets(data: str, arch: str, config: FitConfig, limit: int | None) -> dict:
    splits = load_data(data)
    # A balanced subset: CIFAR's training part is stored class by class.
    train = splits.train if limit is None else per_class_subset(splits.train, per_class=max(1, limit // splits.num_classes))
    trigger = badnets_trigger(splits.input_shape, target=0, size=3)
    poisoned = poison_dataset(train, trigger, rate=0.1, seed=config.seed).data
    start = time.perf_counter()
    model = fit(build_model(arch, num_classes=splits.num_classes, input_shape=splits.input_shape, seed=config.seed),
                poisoned, config)
    seconds = time.perf_counter() - start
    ev = evaluate(model, splits.test, trigger)
    return {"data": data, "arch": arch, "train_images": len(train), "epochs": config.epochs,
            "clean_accuracy": round(ev.clean_accuracy, 4), "attack_success_rate": round(ev.attack_success_rate, 4),
            "train_seconds": round(seconds, 1), "threads": torch.get_num_threads(), "device": config.device}


def time_demo() -> dict:
    out = tempfile.mkdtemp(prefix="pg-demo-")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "poisonguard", "demo", "--out", out, "--quiet"], check=True,
                   env={**os.environ, "PYTHONWARNINGS": "ignore"})
    report = json.loads(Path(out, "report.json").read_text())
    return {"demo_seconds": round(time.perf_counter() - start, 1), "stages": {s["stage"]: s["status"] for s in report.get("stages", [])}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar", action="store_true", help="CIFAR-10 PreActResNet-18 instead of MNIST 5k mnist_cnn")
    p.add_argument("--epochs", type=int, default=None, help="default: 10 (MNIST, as `poisonguard attack`), 1 (CIFAR)")
    p.add_argument("--limit", type=int, default=None, help="train on a balanced subset of about N training images")
    p.add_argument("--demo", action="store_true", help="also time `poisonguard demo`")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    utils.QUIET = True
    if args.cifar:
        config = FitConfig(epochs=args.epochs or 1, batch_size=128, lr=0.1, optimizer="sgd", augment="auto",
                           seed=args.seed, device=args.device)
        print(json.dumps(train_badnets("cifar10", "preact_resnet18", config, args.limit)))
    else:
        config = FitConfig(epochs=args.epochs or 10, batch_size=64, optimizer="adam", seed=args.seed, device=args.device)
        print(json.dumps(train_badnets("mnist5k", "mnist_cnn", config, args.limit)))
    if args.demo:
        print(json.dumps(time_demo()))


if __name__ == "__main__":
    main()
