"""Deep Partition Aggregation on MNIST 5k (Levine & Feizi, 2021): certified accuracy against
0, 5, 10, 20 poisoned training samples, and the time to train all K base models batched
(vmap over stacked parameters) vs one after another with the same recipe.

    PYTHONPATH=src python benchmarks/certify_dpa.py [--k 50] [--epochs 15] [--timing-epochs 2]
"""

from __future__ import annotations

import argparse
import json

import torch

from poisonguard import utils
from poisonguard.certify.ensemble import PartitionTraining, train_partition_models
from poisonguard.certify.poisoning import PartitionAggregation
from poisonguard.data import load_data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--timing-epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    utils.QUIET = True
    torch.set_num_threads(args.threads)
    splits = load_data("mnist5k")
    timing = {}
    states = {}
    for batched in (True, False):
        recipe = PartitionTraining(epochs=args.timing_epochs, batch_size=args.batch_size, seed=0, device="cpu")
        ens, info = train_partition_models("mnist_cnn", splits.train, args.k, recipe, batched=batched)
        timing["batched" if batched else "one after another"] = info["seconds"]
        states[batched] = ens.stacked_state()
        print(json.dumps({"train": "batched (vmap)" if batched else "one after another", "epochs": args.timing_epochs,
                          "k": args.k, "seconds": info["seconds"], "steps": info["steps"]}), flush=True)
    diff = max(float((states[True][n] - states[False][n]).abs().max()) for n in states[True])
    print(json.dumps({"batched_over_sequential_time": round(timing["batched"] / timing["one after another"], 3),
                      "max_param_difference": diff}), flush=True)
    recipe = PartitionTraining(epochs=args.epochs, batch_size=args.batch_size, seed=0, device="cpu")
    ens, info = train_partition_models("mnist_cnn", splits.train, args.k, recipe, batched=True)
    cert = PartitionAggregation(budgets=(0, 5, 10, 20)).certify(ens, splits.test)
    sizes = info["partition_sizes"]
    print(json.dumps({"k": args.k, "epochs": args.epochs, "train_seconds": info["seconds"],
                      "partition_sizes_min_max": [min(sizes), max(sizes)], "clean_accuracy": cert.clean_accuracy,
                      "certified_accuracy": cert.certified_accuracy, "median_certified": cert.median_certified}), flush=True)


if __name__ == "__main__":
    main()
