"""Backdoor removal on CIFAR-10, PreActResNet-18, BadNets 3x3 at 10% (needs a GPU).

BackdoorBench's figures for this setting (clean accuracy / ASR, %): no defence
91.32 / 95.03, fine-tuning 89.96 / 1.48, NC 89.05 / 1.27, fine-pruning 91.31 / 57.13,
ANP 84.17 / 0.73. Issue 4 asks our best method for ASR <= 2% with a clean-accuracy drop
<= 1.5 points, and our fine-pruning to beat 57% ASR. Clean data: 5% of the training set.

    PYTHONPATH=src python benchmarks/repair_cifar_gpu.py [--epochs 60] [--cache DIR] [--json FILE]

Not measured yet: no GPU was lent to the session that wrote it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from poisonguard.attacks import badnets_trigger, poison_dataset
from poisonguard.data import load_data, per_class_subset
from poisonguard.models import build_model, load_model, save_model
from poisonguard.repair import REPAIRERS
from poisonguard.train import evaluate, fit

REFERENCE = {"none": (91.32, 95.03), "fine-tuning": (89.96, 1.48), "neural cleanse": (89.05, 1.27),
             "fine-pruning": (91.31, 57.13), "anp": (84.17, 0.73)}

# Larger models need a few more epochs and, for SGD on batch-normed ResNets, smaller rates.
# shift=4: the model is trained with pad-4 random crops, so it is invariant to 4-pixel shifts
# (the repair default of 1 pixel suits models trained without augmentation).
SETTINGS = {
    "fine_pruning": {"epochs": 20, "lr": 0.01, "batch_size": 128, "shift": 4},
    "refit": {"epochs": 20, "lr": 0.02, "decay_every": 5, "batch_size": 128, "shift": 4},
    "wild": {"epochs": 20, "lr": 0.01, "batch_size": 128, "shift": 4},
    "unlearn": {"epochs": 20, "lr": 0.01, "batch_size": 128, "reverse_epochs": 40},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60, help="training epochs of the backdoored model")
    parser.add_argument("--methods", default="fine_pruning,refit,wild,unlearn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    splits = load_data("cifar10")
    trigger = badnets_trigger(splits.input_shape, target=0, size=3)
    path = args.cache / "cifar_badnets" / "model.pt" if args.cache else None
    if path is not None and path.is_file():
        model = load_model(path).model.cuda()
    else:
        start = time.perf_counter()
        data = poison_dataset(splits.train, trigger, rate=0.1, seed=args.seed).data
        model = fit(build_model("preact_resnet18", num_classes=10, input_shape=splits.input_shape), data,
                    epochs=args.epochs, batch_size=128, optimizer="sgd", seed=args.seed, device="cuda")
        print(f"trained in {time.perf_counter() - start:.0f} s", flush=True)
        if path is not None:
            save_model(model, path, arch="preact_resnet18", classes=splits.classes, input_shape=splits.input_shape)
    base = evaluate(model, splits.test, trigger)
    clean = per_class_subset(splits.train, fraction=0.05, seed=args.seed)
    print(f"backdoored: clean {100 * base.clean_accuracy:.2f} / ASR {100 * base.attack_success_rate:.2f} "
          f"(BackdoorBench {REFERENCE['none'][0]} / {REFERENCE['none'][1]})")
    rows = []
    for method in args.methods.split(","):
        result = REPAIRERS.get(method)(seed=args.seed, device="cuda", **SETTINGS.get(method, {})).repair(
            model, clean, trigger=trigger, test=splits.test)
        drop = 100 * (result.before.clean_accuracy - result.after.clean_accuracy)
        print(f"{method:13s} clean {100 * result.after.clean_accuracy:6.2f} (drop {drop:+.2f}) "
              f"ASR {100 * result.after.attack_success_rate:6.2f}  {result.seconds:6.1f} s", flush=True)
        rows.append({"method": method, **result.to_dict()})
    print("BackdoorBench:", ", ".join(f"{k} {v[0]}/{v[1]}" for k, v in REFERENCE.items()))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
