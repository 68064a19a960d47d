"""Simulator speed: 20 clients x 1 local epoch x 1 round on MNIST 5k, vmap over clients vs a plain loop.

    PYTHONPATH=src python benchmarks/federated_simulator_speed.py [--threads 1] [--repeats 2]
"""

from __future__ import annotations

import argparse

import torch

from poisonguard.data import load_data
from poisonguard.federated.simulate import Simulator


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2, help="alternating runs per mode; the best is kept")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    splits = load_data("mnist5k")
    best = {True: float("inf"), False: float("inf")}
    acc = {}
    for _ in range(args.repeats):
        for vectorize in (True, False):
            r = Simulator(clients=args.clients, rounds=1, vectorize=vectorize, seed=0, device=args.device).run(splits, "fedavg")
            best[vectorize] = min(best[vectorize], r.extra["train_seconds"])
            acc[vectorize] = r.rounds[0].clean_accuracy
    print(f"# MNIST 5k, {args.clients} clients x 1 local epoch ({r.extra['local_steps']} steps of 32) x 1 round, "
          f"torch threads={args.threads}, device={args.device}; local-training seconds, best of {args.repeats}")
    print(f"vmap over clients: {best[True]:.2f} s (accuracy after the round {acc[True]:.3f})")
    print(f"plain loop:        {best[False]:.2f} s (accuracy after the round {acc[False]:.3f})")
    print(f"ratio loop / vmap: {best[False] / best[True]:.2f}x")


if __name__ == "__main__":
    main()
