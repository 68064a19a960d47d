"""GPU figure of issue 5: CERTIFY on a CIFAR-10 ResNet-110 (Cohen et al.'s architecture) at
n = 100,000, batched (fp32 and bf16 autocast) vs a plain fp32 loop at batch size 400.

Not measured yet: no GPU was lent to the session that wrote it. Run on a CUDA machine:

    PYTHONPATH=src python benchmarks/certify_gpu_resnet110.py --images 5 [--model resnet110.pt]

Without --model it uses a seeded untrained ResNet-110 (speed does not depend on the
weights; the radii check then compares near-constant predictions, so prefer a trained model).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from poisonguard import utils
from poisonguard.certify import SmoothedClassifier
from poisonguard.certify.reference import reference_certify
from poisonguard.models import build_model, load_model


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=20_000)
    parser.add_argument("--model", default=None)
    parser.add_argument("--skip-reference", action="store_true", help="the plain loop takes minutes per image")
    args = parser.parse_args()
    utils.QUIET = True
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU: this benchmark is for the GPU machine")
    torch.backends.cudnn.benchmark = True
    if args.model:
        model = load_model(args.model).model
    else:
        torch.manual_seed(0)
        model = build_model("resnet110", num_classes=10, input_shape=(3, 32, 32))
    model = model.cuda().eval()
    try:
        from poisonguard.data import load_data

        x = load_data("cifar10").test.x[:args.images]
    except Exception:  # no CIFAR archive on the machine: seeded random images do for timing
        x = torch.rand(args.images, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ids = list(range(args.images))
    results = {}
    if not args.skip_reference:
        reference_certify(model, x[:1], [999], sigma=args.sigma, n0=10, n=800, alpha=0.001)
        _sync()
        start = time.perf_counter()
        results["plain fp32 batch 400"] = reference_certify(model, x, ids, sigma=args.sigma, n0=args.n0, n=args.n, alpha=0.001)
        _sync()
        ref_s = (time.perf_counter() - start) / args.images
        print(json.dumps({"impl": "plain fp32 batch 400", "s_per_image": round(ref_s, 3)}), flush=True)
    for name, autocast in (("batched fp32", False), ("batched bf16", True)):
        smoothed = SmoothedClassifier(model, sigma=args.sigma, seed=0, device="cuda", batch_size=args.batch_size,
                                      autocast=autocast)
        smoothed.certify(x[:1], 10, args.batch_size, 0.001, start_index=999)
        _sync()
        start = time.perf_counter()
        pred, radii = smoothed.certify(x, args.n0, args.n, 0.001, start_index=0)
        _sync()
        s = (time.perf_counter() - start) / args.images
        row = {"impl": f"{name} batch {args.batch_size}", "s_per_image": round(s, 3)}
        if "plain fp32 batch 400" in results:
            ref_pred, ref_radii = results["plain fp32 batch 400"]
            row.update({"speedup": round(ref_s / s, 2), "identical_radii": radii.tolist() == ref_radii.tolist(),
                        "max_radius_diff": float(abs(radii.numpy() - ref_radii).max())})
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
