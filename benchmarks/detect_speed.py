"""Batched inversion engine vs the one-class-at-a-time reference, side by side in one run.

Both run Neural Cleanse with the same hyperparameters, seeds and batch order on the same
model and clean images (5% of MNIST 5k's training part); the script prints both times,
the speed-up, both verdicts and the largest mask-size difference.

    PYTHONPATH=src python benchmarks/detect_speed.py [--model PATH] [--epochs N] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from detect_sequential_reference import sequential_neural_cleanse  # noqa: E402
from detect_zoo import DEFAULT_CACHE  # noqa: E402

from poisonguard.data import load_data, per_class_subset  # noqa: E402
from poisonguard.detect.anomaly import flag_small, mad_anomaly_index  # noqa: E402
from poisonguard.detect.engine import InversionConfig, frozen_copy, invert_triggers  # noqa: E402
from poisonguard.models import load_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_CACHE / "badnets_s3_bottom-right_seed0" / "model.pt"))
    parser.add_argument("--epochs", type=int, default=InversionConfig().epochs)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prune-after", type=int, default=None,
                        help="also time the engine with K-Arm-style pruning after this many epochs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    splits = load_data("mnist5k")
    clean = per_class_subset(splits.train, fraction=0.05, seed=0)
    model = frozen_copy(load_model(args.model).model, torch.device("cpu"))
    config = InversionConfig(epochs=args.epochs)
    k = splits.num_classes

    start = time.perf_counter()
    inv = invert_triggers(model, clean.x, clean.y, num_classes=k, config=config, seed=0)
    t_batched = time.perf_counter() - start
    start = time.perf_counter()
    _, _, l1_seq, epochs_seq = sequential_neural_cleanse(model, clean.x, k, config, seed=0)
    t_seq = time.perf_counter() - start

    def verdict(l1):
        index = mad_anomaly_index(l1)
        return flag_small(l1, index), [round(float(v), 2) for v in index]

    fb, ib = verdict(inv.mask_l1)
    fs, is_ = verdict(l1_seq)
    print(f"model {args.model}; {len(clean)} clean images; {args.epochs} epochs max; {args.threads} threads")
    print(f"batched engine : {t_batched:7.1f} s  flagged {fb}  index {ib}  epochs {inv.epochs.tolist()}")
    print(f"sequential ref : {t_seq:7.1f} s  flagged {fs}  index {is_}  epochs {epochs_seq}")
    print(f"speed-up {t_seq / t_batched:.2f}x; same verdict: {fb == fs}; "
          f"max |mask L1 difference| {float((inv.mask_l1 - l1_seq).abs().max()):.4f}")
    if args.prune_after:
        # Not the same algorithm any more: pruned classes stop early, their sizes are upper bounds.
        pruning = InversionConfig(epochs=args.epochs, prune_after=args.prune_after)
        start = time.perf_counter()
        inv_p = invert_triggers(model, clean.x, clean.y, num_classes=k, config=pruning, seed=0)
        t_pruned = time.perf_counter() - start
        fp, ip = verdict(inv_p.mask_l1)
        print(f"batched+pruning: {t_pruned:7.1f} s  flagged {fp}  index {ip}  pruned {inv_p.pruned.tolist()}")
        print(f"speed-up with pruning after {args.prune_after} epochs {t_seq / t_pruned:.2f}x; "
              f"same verdict: {fp == fs}")


if __name__ == "__main__":
    main()
