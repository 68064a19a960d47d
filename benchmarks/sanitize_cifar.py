"""Issue 17 on CIFAR-10: `sanitize` of a poisoned CIFAR-10 training set (or a seeded subset).

The goal is 50,000 images in <= 15 min. --per-class sets the stratified subset (5000 = all
50,000); the output says which was run. The model sanitize trains is sanitize's default for
32x32 colour images, cifar_cnn (--arch mnist_cnn: the earlier rows), 10 epochs of Adam. The 10,000 test images are the
held-out part (the class gate's clean reference and the evaluation set). Every (attack,
rate, seed) row is cached as JSON in --cache, so an interrupted run resumes; with --retrain
a fresh mnist_cnn is trained on the default's kept rows and on the true clean subset.

Rows: the default (SCAn, gate "either"), the default with the index-only gate, all scored
methods combined, each method alone. Tuning used seed 1; report seeds are 2 and 3.

    PYTHONPATH=src:benchmarks python benchmarks/sanitize_cifar.py --per-class 5000 --seeds 2 --threads 2 --methods scan --retrain
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sanitize_benchmark import build, fit_eval, method_rows, print_row, retrain_row

from poisonguard.data import load_data, per_class_subset
from poisonguard.sanitize import Sanitizer


class Subset:
    """The splits `build` reads: a stratified training subset, the full test part."""

    def __init__(self, splits, per_class: int, seed: int) -> None:
        self.train = per_class_subset(splits.train, per_class=per_class, seed=seed)
        self.test, self.input_shape = splits.test, splits.input_shape


def one_run(attack, rate, seed, splits, args):
    sub = Subset(splits, args.per_class, seed)
    data, truth, trigger = build(attack, rate, seed, sub)
    wall, cpu = time.perf_counter(), time.process_time()
    result = Sanitizer(methods=args.methods.split(","), epochs=args.epochs, arch=args.arch, seed=seed, device="cpu").run(
        data, reference=splits.test)
    row = {"attack": attack, "rate": rate, "seed": seed, "poisoned": int(truth.sum()), "samples": len(data),
           "seconds": {"wall_all_methods": time.perf_counter() - wall, "cpu_all_methods": time.process_time() - cpu,
                       "train": result.extra["train_seconds"]}}
    labels = data.y.numpy()
    row["methods"] = method_rows(result, truth, labels)
    row["class_index"], row["heldout_index"] = result.class_index, result.extra["heldout_index"]
    from poisonguard.train import accuracy, attack_success_rate

    row["sanitize_model_clean_accuracy"] = accuracy(result.model, splits.test)
    if trigger is not None:
        row["poisoned_model_asr"] = attack_success_rate(result.model, splits.test, trigger)[0]
    if args.retrain and attack != "clean":
        row["retrain"] = retrain_row(result, data, splits, trigger, seed, args.epochs)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="cifar10")
    parser.add_argument("--per-class", type=int, default=1000, help="training images per class (5000 = all)")
    parser.add_argument("--attacks", default="badnets,blended,clean")
    parser.add_argument("--rates", default="0.01,0.05,0.1")
    parser.add_argument("--seeds", default="2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--arch", default="cifar_cnn", help="the model sanitize trains (sanitize's default for CIFAR-10 "
                                                             "is cifar_cnn; the retrained models stay mnist_cnn)")
    parser.add_argument("--methods", default="scan,spectral")
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--cache", default="/tmp/poisonguard-sanitize-cifar-scan")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    splits = load_data(args.data)
    print(f"CIFAR-10: {args.per_class}/class = {10 * args.per_class} training images, {args.threads} thread(s), "
          f"{args.epochs} epochs, methods {args.methods}")
    for seed in (int(s) for s in args.seeds.split(",")):
        for attack in args.attacks.split(","):
            for rate in ([0.0] if attack == "clean" else [float(r) for r in args.rates.split(",")]):
                path = cache / f"{args.per_class}_{attack}_{rate}_{seed}_{args.epochs}_{int(args.retrain)}_{args.methods}_{args.arch}.json"
                if not path.exists():
                    path.write_text(json.dumps(one_run(attack, rate, seed, splits, args)))
                row = json.loads(path.read_text())
                print_row(row)
                print(f"    sanitize model clean acc {row['sanitize_model_clean_accuracy']:.3f}; "
                      f"cpu {row['seconds']['cpu_all_methods']:.0f}s (train {row['seconds']['train']:.0f}s wall)")
    if args.retrain:
        for seed in (int(s) for s in args.seeds.split(",")):
            path = cache / f"{args.per_class}_clean_reference_{seed}_{args.epochs}.json"
            if not path.exists():
                acc, _ = fit_eval(Subset(splits, args.per_class, seed).train, splits, None, seed, args.epochs)
                path.write_text(json.dumps({"seed": seed, "clean_accuracy": acc}))
            print(f"true clean subset, seed {seed}: clean accuracy {json.loads(path.read_text())['clean_accuracy']:.4f}")


if __name__ == "__main__":
    main()
