"""Does the verdict's calibration keep its stated false-positive rate? (issue 16, synthetic clean models)

Synthetic clean models: log trigger size = the class's natural difficulty + a per-model offset
+ per-class noise (homoscedastic normal, heteroscedastic normal with spreads 0.12-0.40, or
Student-t tails with 5 degrees of freedom). Each of CALIBRATIONS calibrations fits the null on
R references (`calibration.fit_null`) and judges FRESH new clean models; printed: the measured
rate and its Clopper-Pearson interval (pooled over calibrations) beside the stated rate.
With `--methods M` (M > 1) every model is judged by the whole verdict (`verdict.judge`) over M
independent methods, each calibrated on its own references: the per-class combination of
their p-values (`combine.py`) is what is measured then.

    PYTHONPATH=src python benchmarks/calibration_fpr.py [--refs 4] [--shrink 0.5] [--statistic robust|lower_mad] [--methods 3]
"""

from __future__ import annotations

import argparse
import math

import torch

from poisonguard.detect import calibration
from poisonguard.detect.anomaly import INDEX_ROWS
from poisonguard.detect.calibration import clopper_pearson, fit_null
from poisonguard.detect.verdict import index_threshold, judge
from poisonguard.results import Detection

EFFECT = torch.tensor([4.0, 2.6, 4.2, 3.6, 4.1, 3.9, 4.3, 4.0, 3.5, 4.2], dtype=torch.float64)


def draw(gen: torch.Generator, n: int, spread: torch.Tensor, tails: float | None) -> torch.Tensor:
    """(n, K) log sizes of synthetic clean models."""
    z = torch.randn(n, len(EFFECT), generator=gen, dtype=torch.float64)
    if tails is not None:  # Student t, rescaled to unit variance
        chi = torch.randn(n, len(EFFECT), int(tails), generator=gen, dtype=torch.float64).pow(2).sum(2) / tails
        z = z / chi.sqrt() * math.sqrt((tails - 2) / tails)
    return EFFECT + 0.2 * torch.randn(n, 1, generator=gen, dtype=torch.float64) + spread * z


class _Nulls:
    """The `Calibration` interface `judge` reads: one fitted null per method."""

    def __init__(self, nulls: dict) -> None:
        self.nulls = nulls

    def null_for(self, method: str) -> dict:
        return self.nulls[method]

    def summary(self) -> dict:
        return {"calibrated": True}


def threshold_flags(gen, args, spread, tails, fpr: float) -> int:
    """Clean models whose largest index passes one method's calibrated threshold."""
    rows, flagged = INDEX_ROWS[args.statistic], 0
    for _ in range(args.calibrations):
        null = fit_null(draw(gen, args.refs, spread, tails).exp().tolist())
        fresh = draw(gen, args.fresh, spread, tails) - torch.tensor(null["reference"], dtype=torch.float64)
        flagged += int((rows(fresh).amax(1) > index_threshold(null, fpr, 1, statistic=args.statistic)).sum())
    return flagged


def verdict_flags(gen, args, spread, tails, fpr: float) -> int:
    """Clean models the whole verdict over --methods independent methods calls backdoored."""
    names = [f"method{j}" for j in range(args.methods)]
    flagged = 0
    for _ in range(args.calibrations):
        cal = _Nulls({n: fit_null(draw(gen, args.refs, spread, tails).exp().tolist()) for n in names})
        for _ in range(args.fresh):
            dets = [Detection(method=n, backdoored=False, flagged_classes=(), anomaly_index=(0.0,) * len(EFFECT),
                              seconds=0.0, mask_l1=tuple(draw(gen, 1, spread, tails)[0].exp().tolist()), threshold=2.0,
                              extra={"targets": list(range(len(EFFECT)))}) for n in names]
            flagged += judge(dets, fpr=fpr, statistic=args.statistic, calibration=cal).backdoored
    return flagged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refs", type=int, default=4)
    parser.add_argument("--shrink", type=float, default=calibration.SHRINK)
    parser.add_argument("--calibrations", type=int, default=60)
    parser.add_argument("--fresh", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--statistic", choices=sorted(INDEX_ROWS), default="robust")
    parser.add_argument("--methods", type=int, default=1, help="> 1: judge with the whole verdict over this many methods")
    args = parser.parse_args()
    calibration.SHRINK = args.shrink
    gen = torch.Generator().manual_seed(args.seed)
    settings = [("homoscedastic normal", torch.full((10,), 0.25, dtype=torch.float64), None),
                ("heteroscedastic normal", torch.linspace(0.12, 0.4, 10, dtype=torch.float64), None),
                ("homoscedastic t5", torch.full((10,), 0.25, dtype=torch.float64), 5.0)]
    print(f"statistic {args.statistic}, R={args.refs} references, shrink {args.shrink}, {args.calibrations} calibrations x "
          f"{args.fresh} fresh clean models, {args.methods} method(s)")
    for name, spread, tails in settings:
        for fpr in (0.05, 0.05 / 3) if args.methods == 1 else (0.05,):
            count = verdict_flags if args.methods > 1 else threshold_flags
            flagged = count(gen, args, spread, tails, fpr)
            n = args.calibrations * args.fresh
            low, high = clopper_pearson(flagged, n)
            print(f"{name:24s} stated {fpr:.4f}  measured {flagged / n:.4f}  [{low:.4f}, {high:.4f}]", flush=True)


if __name__ == "__main__":
    main()
