"""Aggregation speed: poisonguard's rules vs Flower's flwr.server.strategy.aggregate on the same updates.

n clients x d parameters float32 (default 50 x 1,000,000), one timed run each, side by side in
one process, and the largest difference between the two results (they compute the same rule).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/federated_aggregation_speed.py [--quick] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--d", type=int, default=1_000_000)
    p.add_argument("--f", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--rules", default="fedavg,median,trimmed_mean,krum,multi_krum,bulyan")
    p.add_argument("--no-flower", action="store_true", help="time poisonguard only (e.g. n=100, d=11M on a GPU)")
    p.add_argument("--quick", action="store_true", help="d = 100,000")
    args = p.parse_args()
    if args.quick:
        args.d = 100_000
    torch.set_num_threads(args.threads)
    from poisonguard.federated import aggregators as A

    n, d, f = args.n, args.d, args.f
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    x[:f] += 3.0  # f shifted clients so selections are not ties
    xs = x.to(args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    m = n - f
    ours = {
        "fedavg": lambda: A.fedavg(xs),
        "median": lambda: A.median(xs),
        "trimmed_mean": lambda: A.trimmed_mean(xs, f=f),
        "krum": lambda: A.krum(xs, f=f),
        "multi_krum": lambda: A.multi_krum(xs, f=f, m=m),
        "bulyan": lambda: A.bulyan(xs, f=f),
    }
    print(f"# n={n} clients, d={d:,} float32, f={f}, device={args.device}, torch threads={args.threads}")
    print("| rule | poisonguard s | Flower s | speed-up | max |diff| |")
    print("|---|---|---|---|---|")
    if not args.no_flower:
        from flwr.server.strategy import aggregate as fl

        results = [([row], 1) for row in x.numpy()]
        theirs = {
            "fedavg": lambda: fl.aggregate(results)[0],
            "median": lambda: fl.aggregate_median(results)[0],
            "trimmed_mean": lambda: fl.aggregate_trimmed_avg(results, f / n)[0],
            "krum": lambda: fl.aggregate_krum(results, f, 0)[0],
            "multi_krum": lambda: fl.aggregate_krum(results, f, m)[0],
            "bulyan": lambda: fl.aggregate_bulyan(list(results), f, fl.aggregate_krum, to_keep=0)[0],
        }
    for rule in args.rules.split(","):
        ours[rule]()  # warm-up (allocator, first-call overheads), not timed
        sync()
        start = time.perf_counter()
        out = ours[rule]()
        sync()
        ours_s = time.perf_counter() - start
        if args.no_flower:
            print(f"| {rule} | {ours_s:.3f} | — | — | — |", flush=True)
            continue
        ref, theirs_s = timed(theirs[rule])
        diff = float(np.abs(out.cpu().numpy() - ref).max())
        print(f"| {rule} | {ours_s:.3f} | {theirs_s:.3f} | {theirs_s / ours_s:.1f}x | {diff:.2e} |", flush=True)
    one_pass = timed(lambda: xs.sum(0))[1]
    print(f"# one pass over the data (x.sum(0)): {one_pass:.3f} s")


if __name__ == "__main__":
    main()
