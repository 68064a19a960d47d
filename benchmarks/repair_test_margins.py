"""The margins behind tests/repair/test_repair_methods.py's budgets: every repair method's
defaults on the test fixture's recipe (mnist_cnn, BadNets 3x3, 10% poisoned, 8 epochs) for
several fixture seeds, with a given number of torch threads. One JSON line per repair.

    PYTHONPATH=src python benchmarks/repair_test_margins.py --threads 1 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from poisonguard import utils
from poisonguard.attacks import badnets_trigger, poison_dataset
from poisonguard.data import load_data, per_class_subset
from poisonguard.models import build_model
from poisonguard.repair import REPAIRERS
from poisonguard.train import fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", default="0,1,2", help="fixture seeds (poisoning and training)")
    parser.add_argument("--methods", default=",".join(REPAIRERS.names()))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    utils.QUIET = True
    mnist = load_data("mnist5k")
    trigger = badnets_trigger(mnist.input_shape, target=0, size=3)
    clean = per_class_subset(mnist.train, fraction=0.05, seed=0)  # as the test's `clean` fixture
    for seed in (int(s) for s in args.seeds.split(",")):
        data = poison_dataset(mnist.train, trigger, rate=0.1, seed=seed).data
        model = fit(build_model("mnist_cnn", num_classes=10, input_shape=mnist.input_shape, seed=seed), data,
                    epochs=8, batch_size=64, seed=seed, device="cpu")
        for name in args.methods.split(","):
            start = time.perf_counter()
            r = REPAIRERS.get(name)(seed=0, device="cpu").repair(model, clean, trigger=trigger, test=mnist.test)
            print(json.dumps({"threads": args.threads, "seed": seed, "method": name,
                              "asr_before": r.before.attack_success_rate, "asr": round(r.after.attack_success_rate, 4),
                              "drop": round(r.before.clean_accuracy - r.after.clean_accuracy, 4),
                              "seconds": round(time.perf_counter() - start, 1)}), flush=True)


if __name__ == "__main__":
    main()
