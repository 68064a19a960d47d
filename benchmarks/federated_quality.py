"""Defence quality: aggregator x attack table on MNIST 5k (clean accuracy, backdoor ASR).

All runs start from one attack-free FedAvg warm start (model replacement strikes a converging
model, as in Bagdasaryan et al., 2020), then run --rounds attacked rounds.

    PYTHONPATH=src python benchmarks/federated_quality.py [--quick] [--malicious 4]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from poisonguard.data import load_data
from poisonguard.federated.aggregators import aggregator_names
from poisonguard.utils import parse_options
from poisonguard.federated.simulate import Simulator, run_table

DEFAULT_ATTACKS = "none,model_replacement,alie,backdoor,sign_flip,gaussian,ipm,label_flip"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--malicious", type=int, default=4)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--aggregators", default=",".join(aggregator_names()))
    p.add_argument("--attacks", default=DEFAULT_ATTACKS)
    p.add_argument("--attack-opt", action="append", metavar="NAME=VALUE",
                   help="attack option, e.g. z=1.0 or backdoor=false (repeatable)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids spin-wait stalls on a shared CPU)")
    p.add_argument("--json", default=None)
    p.add_argument("--warm-file", default=None, help="cache the warm start here (a tensor file) and reuse it")
    p.add_argument("--quick", action="store_true", help="fewer rounds and attacks")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.warmup, args.rounds, args.attacks = 10, 2, "none,model_replacement"
    attack_options = parse_options(args.attack_opt)
    splits = load_data("mnist5k")
    sim = Simulator(clients=args.clients, malicious=args.malicious, rounds=args.rounds, seed=0)
    start = time.perf_counter()
    initial = None
    if args.warm_file and os.path.exists(args.warm_file):
        initial = torch.load(args.warm_file, weights_only=True)
    elif args.warmup > 0:
        initial = sim.pretrain(splits, args.warmup)
        if args.warm_file:
            torch.save(initial, args.warm_file)
    print(f"# warm start ready after {time.perf_counter() - start:.0f} s", flush=True)
    print(f"# MNIST 5k, {args.clients} clients, {args.malicious} malicious, warm start {args.warmup} FedAvg rounds, "
          f"{args.rounds} attacked rounds{', attack options ' + str(attack_options) if attack_options else ''}")
    print("| attack | aggregator | clean acc (last) | ASR (last) | ASR (max) | malicious selected per round | s |")
    print("|---|---|---|---|---|---|---|", flush=True)
    results = []
    for attack in args.attacks.split(","):
        for agg in args.aggregators.split(","):
            t0 = time.perf_counter()
            r = run_table(splits, sim, [agg], [attack], initial=initial, attack_options=attack_options)[0]
            results.append(r)
            if not r.rounds:
                print(f"| {r.attack} | {r.aggregator} | error: {r.extra['error']} | | | | |", flush=True)
                continue
            last = r.rounds[-1]
            asrs = [x.attack_success_rate for x in r.rounds if x.attack_success_rate is not None]
            sel = [x.extra.get("malicious_selected") for x in r.rounds if "malicious_selected" in x.extra]
            print(f"| {r.attack} | {r.aggregator} | {last.clean_accuracy:.3f} | "
                  f"{'—' if last.attack_success_rate is None else f'{last.attack_success_rate:.3f}'} | "
                  f"{'—' if not asrs else f'{max(asrs):.3f}'} | {'—' if not sel else sel} | "
                  f"{time.perf_counter() - t0:.0f} |", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([r.to_dict() for r in results], fh, indent=1)


if __name__ == "__main__":
    main()
