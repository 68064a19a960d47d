"""What DP buys against BadNets: clean accuracy and attack success rate vs epsilon.

Trains mnist_cnn on MNIST 5k poisoned with a 3x3 white BadNets patch (target 0) at 10%,
1% and a handful (10 samples), without privacy (epsilon = inf, the foundation's recipe),
with the DP recipe minus clipping and noise (the control), with gradient shaping
(clipping + noise, no guarantee; Hong et al., 2020) and with DP-SGD
at epsilon 8, 3 and 1 (delta 1e-5, PRV accountant).

    PYTHONPATH=src python benchmarks/privacy_poison_table.py [--quick] [--epochs 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from poisonguard.attacks import badnets_trigger, poison_dataset
from poisonguard.data import load_data
from poisonguard.models import build_model
from poisonguard.privacy import DPSGD, GradientShaping
from poisonguard.train import evaluate, fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 epochs, 10%% and 10-sample poisoning only")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    parser.add_argument("--settings", default="10%,1%,10 samples", help="comma-separated subset of: 10%%,1%%,10 samples")
    parser.add_argument("--no-shaping", action="store_true", help="leave out the gradient-shaping column")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # 10 epochs: shorter runs have not learned a small backdoor even without DP (issue-6 results).
    epochs = args.epochs or (2 if args.quick else 10)
    splits = load_data("mnist5k")
    trigger = badnets_trigger(splits.input_shape, target=0, size=3)
    n = len(splits.train)
    settings = [("10%", 0.1), ("1%", 0.01), ("10 samples", 10 / n)]
    wanted = [w.strip() for w in args.settings.split(",")]
    settings = [s for s in settings if s[0] in wanted]
    if args.quick:
        settings = [s for s in settings if s[0] != "1%"]
    # "no DP" = the DP recipe (SGD momentum, batch 256, same epochs) without clipping or noise, at
    # lr 0.1 since lr 0.5 diverges unclipped: it separates DP's effect from the recipe's.
    columns = [("inf", None), ("no DP, DP recipe", "recipe"), ("8", 8.0), ("3", 3.0), ("1", 1.0)]
    if not args.no_shaping:
        columns.append(("shaping s=0.5", "shaping"))
    rows = []
    print(f"MNIST 5k, mnist_cnn, BadNets 3x3 target 0, {epochs} epochs, seed {args.seed}, delta 1e-5, C = 1, "
          f"DP batch 256 (Poisson), SGD lr 0.5 momentum 0.9; inf = plain Adam training", flush=True)
    for label, rate in settings:
        data = poison_dataset(splits.train, trigger, rate=rate, seed=args.seed).data
        for name, eps in columns:
            model = build_model("mnist_cnn", num_classes=10, input_shape=splits.input_shape)
            start = time.perf_counter()
            sigma = None
            if eps is None:
                model = fit(model, data, epochs=epochs, batch_size=64, seed=args.seed, device="cpu")
                spent = float("inf")
            elif eps == "recipe":
                model, _ = GradientShaping(noise_multiplier=0.0, max_grad_norm=1e6, lr=0.1, epochs=epochs,
                                           seed=args.seed, device="cpu").fit(model, data)
                spent = float("inf")
            elif eps == "shaping":
                model, privacy = GradientShaping(noise_multiplier=0.5, max_grad_norm=1.0, epochs=epochs,
                                                 seed=args.seed, device="cpu").fit(model, data)
                spent, sigma = float("inf"), privacy.noise_multiplier
            else:
                model, privacy = DPSGD(epsilon=eps, delta=1e-5, max_grad_norm=1.0, epochs=epochs,
                                       seed=args.seed, device="cpu").fit(model, data)
                spent, sigma = privacy.epsilon, privacy.noise_multiplier
            ev = evaluate(model, splits.test, trigger)
            row = {"poison": label, "n_poisoned": int(round(rate * n)), "epsilon": name, "epsilon_spent": spent,
                   "noise_multiplier": sigma, "clean_accuracy": ev.clean_accuracy,
                   "attack_success_rate": ev.attack_success_rate, "seconds": round(time.perf_counter() - start, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    print("| poison | " + " | ".join(f"{'eps ' if c[1] not in ('shaping', 'recipe') else ''}{c[0]}: acc / ASR" for c in columns) + " |")
    print("|---|" + "---|" * len(columns))
    for label, _ in settings:
        cells = [f"{r['clean_accuracy']:.3f} / {r['attack_success_rate']:.3f}" for r in rows if r["poison"] == label]
        print(f"| {label} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"epochs": epochs, "seed": args.seed, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
