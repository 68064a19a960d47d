"""From each method's raw scores to one verdict, one cut and the flagged positions.

Calibration (each method): scores become z-scores against the clean bulk. SCAn's already
are (distance from each class's own subgroup in that subgroup's spread); the others are
standardised within each class by median and MAD (for per-class scores) or over all samples
(for global ones), robust while poison is a minority of what they are compared with.

Combination (Stouffer's method): a sample's combined z is the sum of its methods' z over
sqrt(M), and a class's combined anomaly index likewise sums the methods' class indices. A
class index is the MAD anomaly index across classes (as Neural Cleanse and SCAn compare
classes) of a per-class statistic: SCAn's subgroup separation, or for the other methods the
class's upper-tail z (its 1 - 2 x FPR quantile), which rises only where a cluster of samples
stands out.

Two classes (most tables) give no spread across classes to measure: there a class's index
is the log ratio of its statistic to the other class's (floored at 0.5, a typical z), so a
class whose upper tail stands e times further out than the other's scores 1, and the
threshold is `TWO_CLASS_THRESHOLD` (1.0; chosen on seed 0 of the two statsmodels tables,
measured on the other seeds in benchmarks/tabular_checklist.py). A data set whose two
classes are poisoned alike (all-to-all) is not seen this way.

Verdict: a class is a suspected target when its combined index exceeds `class_threshold`
(exp(2), SCAn's level; `TWO_CLASS_THRESHOLD` for two classes); the data set is "poisoned" when some class is. Flagged samples are
those of target classes whose combined z exceeds the normal quantile of 1 - FPR, so within a
target class about FPR of its clean samples are flagged and nothing outside target classes:
a clean data set flags nothing, and a method's fixed removal share never decides the verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import norm

from poisonguard.sanitize.base import class_indices

CLASS_THRESHOLD = math.exp(2)
TWO_CLASS_THRESHOLD = 1.0
_STAT_FLOOR = 0.5


def robust_z(values: np.ndarray) -> np.ndarray:
    med = np.median(values)
    mad = 1.4826 * np.median(np.abs(values - med))
    if mad <= 1e-12:  # more than half identical: fall back to the mean absolute deviation
        mad = 1.2533 * np.mean(np.abs(values - med))
    return (values - med) / max(mad, 1e-12)


def calibrate(scores: np.ndarray, labels: np.ndarray, *, per_class: bool, calibrated: bool) -> np.ndarray:
    """Per-sample z-scores (N,) against the bulk."""
    scores = np.asarray(scores, dtype=np.float64)
    if calibrated:
        return scores
    if not per_class:
        return robust_z(scores)
    z = np.zeros_like(scores)
    for _, idx in class_indices(labels).items():
        z[idx] = robust_z(scores[idx]) if len(idx) > 2 else 0.0
    return z


def class_anomaly_index(stat: dict[int, float]) -> dict[int, float]:
    """MAD anomaly index of a per-class statistic, upper side only (large = suspicious)."""
    keys = sorted(stat)
    if len(keys) == 2:  # no spread across classes: each class against the other, in log ratio
        a, b = (max(stat[k], _STAT_FLOOR) for k in keys)
        return {keys[0]: math.log(a / b), keys[1]: math.log(b / a)}
    if len(keys) < 3:
        return {k: 0.0 for k in keys}
    values = np.array([stat[k] for k in keys])
    z = robust_z(values)
    return {k: float(v) for k, v in zip(keys, z)}


def tail_statistic(z: np.ndarray, labels: np.ndarray, fpr: float) -> dict[int, float]:
    q = 1 - min(0.5, 2 * fpr)
    return {c: float(np.quantile(z[idx], q)) for c, idx in class_indices(labels).items()}


@dataclass(frozen=True)
class Combined:
    """The combined decision: per-sample z (N,), per-class index, targets, flagged positions."""

    z: np.ndarray
    class_index: dict[int, float]
    targets: tuple[int, ...]
    flagged: np.ndarray
    cut: float
    fpr: float
    class_threshold: float
    per_method_index: dict[str, dict[int, float]] = field(default_factory=dict)

    @property
    def poisoned(self) -> bool:
        return bool(self.targets)


def combine(zs: dict[str, np.ndarray], class_stats: dict[str, dict[int, float]], labels: np.ndarray, *,
            fpr: float = 0.01, class_threshold: float = CLASS_THRESHOLD) -> Combined:
    """Stouffer-combine calibrated z-scores and class statistics into one decision."""
    if not zs:
        raise ValueError("combine needs at least one method's scores")
    if not 0 < fpr < 0.5:
        raise ValueError(f"fpr must lie in (0, 0.5), got {fpr}")
    m = len(zs)
    z = sum(zs.values()) / math.sqrt(m)
    per_method = {name: class_anomaly_index(class_stats[name]) for name in zs}
    classes = sorted(int(c) for c in np.unique(labels))
    index = {c: sum(per_method[name].get(c, 0.0) for name in zs) / math.sqrt(m) for c in classes}
    if len(classes) == 2 and class_threshold == CLASS_THRESHOLD:
        class_threshold = TWO_CLASS_THRESHOLD  # the log-ratio index's own scale
    targets = tuple(c for c in classes if index[c] > class_threshold)
    cut = float(norm.ppf(1 - fpr))
    in_target = np.isin(labels, targets)
    flagged = np.flatnonzero(in_target & (z > cut))
    return Combined(z=z, class_index=index, targets=targets, flagged=flagged, cut=cut, fpr=fpr,
                    class_threshold=class_threshold, per_method_index=per_method)
