"""DP-SGD throughput vs non-private training on mnist_cnn, side by side in one run.

Each round trains one epoch on the same MNIST slice with: the foundation's `fit`
(non-private, same batch size, SGD), and DP-SGD (Poisson sampling, clipping, noise) in each
Opacus grad-sample mode. Rounds are interleaved so machine load hits every mode alike;
the medians and the ratio to non-private samples/s are printed.

    PYTHONPATH=src python benchmarks/privacy_throughput.py [--rounds 3] [--samples 2048]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from poisonguard.data import load_data
from poisonguard.models import build_model
from poisonguard.privacy.engine import train_private
from poisonguard.train import fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--modes", default="ghost,hooks,functorch,ew")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    splits = load_data("mnist5k")
    data = splits.train.subset(torch.arange(min(args.samples, len(splits.train))))
    shape = splits.input_shape
    modes = [m.strip() for m in args.modes.split(",")]
    speeds: dict[str, list[float]] = {"non-private": [], **{m: [] for m in modes}}
    for r in range(args.rounds):
        for name in speeds:
            model = build_model("mnist_cnn", num_classes=10, input_shape=shape)
            if name == "non-private":
                start = time.perf_counter()
                fit(model, data, epochs=1, batch_size=args.batch_size, optimizer="sgd", lr=0.1, device="cpu")
                speeds[name].append(len(data) / (time.perf_counter() - start))
                continue
            try:
                _, info = train_private(model, data, max_grad_norm=1.0, epochs=1, batch_size=args.batch_size,
                                        lr=None, optimizer="sgd", grad_sample_mode=name,
                                        max_physical_batch_size=args.batch_size, seed=r, device="cpu",
                                        noise_multiplier=1.0, poisson=True)
                speeds[name].append(info["samples_per_second"])
            except Exception as exc:  # a mode this model or Opacus version cannot run
                print(f"{name}: failed: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
                speeds[name].append(float("nan"))
        print(json.dumps({"round": r, **{k: round(v[-1], 1) for k, v in speeds.items()}}), flush=True)
    base = statistics.median(speeds["non-private"])
    print(f"\nmnist_cnn, {len(data)} samples x 1 epoch, batch {args.batch_size}, {args.rounds} interleaved rounds, "
          f"{torch.get_num_threads()} threads")
    print("| training | median samples/s | ratio to non-private | all rounds |")
    print("|---|---|---|---|")
    for name, values in speeds.items():
        med = statistics.median(values)
        print(f"| {name if name == 'non-private' else 'DP-SGD ' + name} | {med:.0f} | {med / base:.2f} | "
              f"{', '.join(f'{v:.0f}' for v in values)} |")


if __name__ == "__main__":
    main()
