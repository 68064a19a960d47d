"""Does the verdict's calibration keep its stated false-positive rate? (issue 16, synthetic clean models)

Synthetic clean models: log trigger size = the class's natural difficulty + a per-model offset
+ per-class noise (homoscedastic normal, heteroscedastic normal with spreads 0.12-0.40, or
Student-t tails with 5 degrees of freedom). Each of CALIBRATIONS calibrations fits the null on
R references (`calibration.fit_null`) and judges FRESH new clean models; printed: the measured
rate and its Clopper-Pearson interval (pooled over calibrations) beside the stated rate.

    PYTHONPATH=src python benchmarks/calibration_fpr.py [--refs 4] [--shrink 0.5] [--statistic robust|lower_mad]
"""

from __future__ import annotations

import argparse
import math

import torch

from poisonguard.detect import calibration
from poisonguard.detect.anomaly import INDEX_ROWS
from poisonguard.detect.calibration import clopper_pearson, fit_null
from poisonguard.detect.verdict import index_threshold

EFFECT = torch.tensor([4.0, 2.6, 4.2, 3.6, 4.1, 3.9, 4.3, 4.0, 3.5, 4.2], dtype=torch.float64)


def draw(gen: torch.Generator, n: int, spread: torch.Tensor, tails: float | None) -> torch.Tensor:
    """(n, K) log sizes of synthetic clean models."""
    z = torch.randn(n, len(EFFECT), generator=gen, dtype=torch.float64)
    if tails is not None:  # Student t, rescaled to unit variance
        chi = torch.randn(n, len(EFFECT), int(tails), generator=gen, dtype=torch.float64).pow(2).sum(2) / tails
        z = z / chi.sqrt() * math.sqrt((tails - 2) / tails)
    return EFFECT + 0.2 * torch.randn(n, 1, generator=gen, dtype=torch.float64) + spread * z


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refs", type=int, default=4)
    parser.add_argument("--shrink", type=float, default=calibration.SHRINK)
    parser.add_argument("--calibrations", type=int, default=60)
    parser.add_argument("--fresh", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--statistic", choices=sorted(INDEX_ROWS), default="robust")
    args = parser.parse_args()
    calibration.SHRINK = args.shrink
    gen = torch.Generator().manual_seed(args.seed)
    settings = [("homoscedastic normal", torch.full((10,), 0.25, dtype=torch.float64), None),
                ("heteroscedastic normal", torch.linspace(0.12, 0.4, 10, dtype=torch.float64), None),
                ("homoscedastic t5", torch.full((10,), 0.25, dtype=torch.float64), 5.0)]
    rows = INDEX_ROWS[args.statistic]
    print(f"statistic {args.statistic}, R={args.refs} references, shrink {args.shrink}, {args.calibrations} calibrations x {args.fresh} fresh clean models")
    for name, spread, tails in settings:
        for fpr in (0.05, 0.05 / 3):
            flagged = 0
            for _ in range(args.calibrations):
                null = fit_null(draw(gen, args.refs, spread, tails).exp().tolist())
                fresh = draw(gen, args.fresh, spread, tails) - torch.tensor(null["reference"], dtype=torch.float64)
                flagged += int((rows(fresh).amax(1) > index_threshold(null, fpr, 1, statistic=args.statistic)).sum())
            n = args.calibrations * args.fresh
            low, high = clopper_pearson(flagged, n)
            print(f"{name:24s} stated {fpr:.4f}  measured {flagged / n:.4f}  [{low:.4f}, {high:.4f}]", flush=True)


if __name__ == "__main__":
    main()
