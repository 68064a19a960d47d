"""Randomized smoothing on MNIST 5k: certified accuracy of Gaussian-augmented mnist_cnn models.

Trains one model per sigma with Gaussian noise augmentation (Cohen et al., 2019) on the
4,000 training images, then certifies evenly spaced test images with n0 = 100, n = 10,000,
alpha = 0.001 and prints the certified-accuracy table.

    PYTHONPATH=src python benchmarks/certify_mnist.py [--examples 200] [--quick]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from poisonguard import utils
from poisonguard.certify import SmoothedClassifier
from poisonguard.certify.augment import fit_gaussian_augment
from poisonguard.certify.noise import PHASE_ESTIMATE, PHASE_SELECT
from poisonguard.certify.smoothing import DEFAULT_RADII, decide_certify, evenly_spaced, summarize
from poisonguard.data import load_data
from poisonguard.models import build_model, load_model, save_model
from poisonguard.train import FitConfig, accuracy


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--sigmas", default="0.25,0.5")
    parser.add_argument("--models", default="/tmp/poisonguard-certify-models")
    parser.add_argument("--reuse", action="store_true", help="load the models trained by an earlier run")
    parser.add_argument("--out", default="benchmarks/results/certify_mnist.json")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a crowded 2-core machine)")
    parser.add_argument("--quick", action="store_true", help="20 examples, n = 1,000, 3 epochs")
    args = parser.parse_args()
    if args.quick:
        args.examples, args.n, args.epochs = 20, 1000, 3
    utils.QUIET = True
    torch.set_num_threads(args.threads)
    splits = load_data("mnist5k")
    rows = []
    for sigma in [float(s) for s in args.sigmas.split(",")]:
        path = Path(args.models) / f"sigma{sigma}" / "model.pt"
        start = time.perf_counter()
        if args.reuse and path.is_file():
            model = load_model(path).model
        else:
            model = build_model("mnist_cnn", num_classes=10, input_shape=splits.input_shape, seed=0)  # fixed init: comparable runs
            config = FitConfig(epochs=args.epochs, batch_size=64, optimizer="adam", seed=0, device="cpu")
            fit_gaussian_augment(model, splits.train, config, sigma=sigma)
            save_model(model, path, arch="mnist_cnn", classes=splits.classes, input_shape=splits.input_shape,
                       training={"defense": "gaussian_augment", "sigma": sigma, "epochs": args.epochs})
        train_s = time.perf_counter() - start
        clean = accuracy(model, splits.test)
        # Certify in pieces and print the running table, so a long run still leaves figures behind.
        index = evenly_spaced(len(splits.test), args.examples)
        smoothed = SmoothedClassifier(model, sigma=sigma, seed=0, device="cpu", batch_size=400)
        plan = [(PHASE_SELECT, 100), (PHASE_ESTIMATE, args.n)]
        preds, radii, start = [], [], time.perf_counter()
        for s in range(0, len(index), 10):
            ids = index[s:s + 10]
            counts = smoothed.sample_counts(splits.test.x[torch.as_tensor(ids)], plan, indices=ids.tolist())
            p, r = decide_certify(counts.numpy(), args.n, sigma, 0.001)
            preds += p.tolist()
            radii += r.tolist()
            done = index[:len(preds)]
            cert = summarize(preds, radii, splits.test.y[torch.as_tensor(done)].numpy(), index=done, sigma=sigma,
                             n=args.n, n0=100, alpha=0.001, radii_grid=DEFAULT_RADII,
                             seconds_per_example=(time.perf_counter() - start) / len(preds))
            row = {"sigma": sigma, "train_seconds": round(train_s, 1), "clean_accuracy": clean,
                   "certified_accuracy": cert.certified_accuracy, "abstain_rate": cert.abstain_rate,
                   "seconds_per_example": round(cert.seconds_per_example, 3), "examples": len(preds), "n": args.n}
            print(json.dumps(row), flush=True)
        rows.append(row)
    radii = list(rows[0]["certified_accuracy"])
    print("\n| sigma | clean acc (base) | " + " | ".join(f"r={float(r):g}" for r in radii) + " | abstain | s/example |")
    print("|---|---|" + "---|" * len(radii) + "---|---|")
    for r in rows:
        cells = " | ".join(f"{r['certified_accuracy'][k]:.3f}" for k in radii)
        print(f"| {r['sigma']} | {r['clean_accuracy']:.3f} | {cells} | {r['abstain_rate']:.3f} | {r['seconds_per_example']} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
