"""Certify throughput: batched SmoothedClassifier vs a plain fp32 Cohen-style loop (batch 400).

Both read the same noise stream, so the radii must be identical; the script checks it and
prints seconds per image and the ratio, measured side by side in one run.

    PYTHONPATH=src python benchmarks/certify_speed.py [--images 4] [--n 10000] [--model PATH]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from poisonguard import utils
from poisonguard.certify import SmoothedClassifier
from poisonguard.certify.reference import reference_certify
from poisonguard.data import load_data
from poisonguard.models import build_model, load_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--batch-sizes", default="400,1000,4000")
    parser.add_argument("--model", default=None, help="a trained model file (default: untrained mnist_cnn)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    utils.QUIET = True
    torch.set_num_threads(args.threads)
    splits = load_data("mnist5k")
    if args.model:
        model = load_model(args.model).model
    else:
        torch.manual_seed(0)
        model = build_model("mnist_cnn", num_classes=10, input_shape=splits.input_shape).eval()
    x = splits.test.x[:args.images]
    ids = list(range(args.images))
    reference_certify(model, x[:1], [999], sigma=args.sigma, n0=10, n=400, alpha=0.001)  # warm up
    start = time.perf_counter()
    ref_pred, ref_radii = reference_certify(model, x, ids, sigma=args.sigma, n0=args.n0, n=args.n, alpha=0.001)
    ref_s = (time.perf_counter() - start) / args.images
    print(json.dumps({"impl": "plain loop fp32 batch 400", "s_per_image": round(ref_s, 3)}), flush=True)
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        smoothed = SmoothedClassifier(model, sigma=args.sigma, seed=0, device="cpu", batch_size=bs)
        smoothed.certify(x[:1], 10, 400, 0.001, start_index=999)  # warm up
        start = time.perf_counter()
        pred, radii = smoothed.certify(x, args.n0, args.n, 0.001, start_index=0)
        s = (time.perf_counter() - start) / args.images
        print(json.dumps({"impl": f"batched fp32 batch {bs}", "s_per_image": round(s, 3), "speedup": round(ref_s / s, 2),
                          "identical_predictions": pred.tolist() == ref_pred.tolist(),
                          "identical_radii": radii.tolist() == ref_radii.tolist(),
                          "radii": [round(r, 4) for r in radii.tolist()]}), flush=True)


if __name__ == "__main__":
    main()
