"""Combining the detectors' calibrated p-values per class: min(Bonferroni, Fisher).

Each method m gives every class c a calibrated p-value p[c, m]: the probability that a clean
model's LARGEST index under m reaches the class's index (`verdict.class_p_values`). A trigger
that only one method can see (a warp for FeatureRE, a patch for Neural Cleanse) shows as one
small p-value; one that two methods each see partly (a colour filter: a small mask and a small
feature-space change for the same class) shows as two moderate ones, each short of a Bonferroni
threshold. The per-class statistic keeps both kinds:

    T_c = min(M * min_m p[c, m],  FisherSF(-2 sum_m log p[c, m], 2M))

Fisher's method (Fisher 1925, "Statistical Methods for Research Workers", section 21.1) adds
the evidence of methods that agree on a class; the Bonferroni term keeps a single method's
strong finding from being diluted by the others' indifference. T is not a p-value itself (it
is the smaller of two), so its own null is simulated with the methods' model-level p-values
independent and uniform, and the class is flagged when T_c is below that null's `fpr`
quantile (`level`). T is increasing in every p-value, and every p[c, m] is at least method
m's model-level p-value, so the smallest T_c over classes is at least T of those model-level
p-values: with independent methods the verdict keeps the stated false-positive rate.
Independence is an assumption. On the MNIST zoo's 12 clean models the methods' per-class
p-values had Spearman correlations of -0.15 to 0.22 (benchmarks/results/issue-16.md, session 7).

Methods that share an engine are not independent (TABOR is Neural Cleanse with more
regularisers): the verdict gives each detector class a `family` and first takes, per class and
family, the family's smallest p times its size (Bonferroni, valid under any dependence); T then
combines families (`verdict._combined`). With one family T = p and the level is `fpr` itself.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.stats import chi2

DRAWS = 200_000  # draws of the null: the level's false-positive rate is fpr to within about 1% of it
_FLOOR = 1e-300


def statistic(p: np.ndarray) -> np.ndarray:
    """T of p-values with methods on the last axis (shape (..., M))."""
    p = np.clip(np.asarray(p, dtype=np.float64), _FLOOR, 1.0)
    m = p.shape[-1]
    bonferroni = np.minimum(1.0, m * p.min(-1))
    fisher = chi2.sf(-2.0 * np.log(p).sum(-1), 2 * m)
    return np.minimum(bonferroni, fisher)


@lru_cache(maxsize=16)
def _null(n_methods: int) -> np.ndarray:
    """Sorted draws of T for `n_methods` independent uniform p-values (seeded: verdicts are reproducible)."""
    draws = np.random.default_rng(20260101 + n_methods).uniform(size=(DRAWS, n_methods))
    return np.sort(statistic(draws))


def level(fpr: float, n_methods: int) -> float:
    """The cut on T that a clean model passes with probability 1 - fpr."""
    if n_methods <= 1:
        return float(fpr)
    return float(np.quantile(_null(n_methods), fpr))


def p_value(t: float, n_methods: int) -> float:
    """P(T <= t) for a clean model: the model-level p-value of the smallest T over classes."""
    if n_methods <= 1:
        return float(min(1.0, max(t, 0.0)))
    null = _null(n_methods)
    return float((np.searchsorted(null, t, side="right") + 1) / (len(null) + 1))
