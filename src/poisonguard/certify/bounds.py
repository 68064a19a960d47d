"""Certificate math for randomized smoothing (Cohen, Rosenfeld & Kolter, 2019), as plain functions.

Everything here works on counts and probabilities (NumPy arrays or scalars), so it can be
checked against hand-computed answers without any model.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import beta, binomtest, norm


def clopper_pearson_lower(k, n, alpha: float) -> np.ndarray:
    """One-sided (1 - alpha) Clopper-Pearson lower confidence bound on a binomial proportion.

    Equal to the lower end of the two-sided interval at level 2 * alpha, i.e.
    `statsmodels.proportion_confint(k, n, alpha=2 * alpha, method="beta")[0]` as Cohen et
    al. (2019) use it: the alpha quantile of Beta(k, n - k + 1), and 0 when k = 0.

    Args:
        k: successes, scalar or array (..,).
        n: trials (same shape or scalar).
        alpha: the allowed probability that the bound exceeds the true proportion.
    """
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        lower = beta.ppf(alpha, np.maximum(k, 1e-300), n - k + 1)
    return np.where(k > 0, lower, 0.0)


def clopper_pearson_upper(k, n, alpha: float) -> np.ndarray:
    """One-sided (1 - alpha) Clopper-Pearson upper bound: 1 - alpha quantile of Beta(k + 1, n - k)."""
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        upper = beta.ppf(1 - alpha, k + 1, np.maximum(n - k, 1e-300))
    return np.where(k < n, upper, 1.0)


def smoothing_radius(p_lower, sigma: float) -> np.ndarray:
    """Certified L2 radius sigma * Phi^-1(p_lower) (Cohen et al., 2019, Theorem 1 with pB = 1 - pA).

    Returns NaN where p_lower <= 1/2 (no certificate: CERTIFY abstains there).
    """
    p = np.asarray(p_lower, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        radius = sigma * norm.ppf(p)
    return np.where(p > 0.5, radius, np.nan)


def certify_from_counts(guess, counts_for_guess, n: int, sigma: float, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """The decision of CERTIFY once the counts are in.

    Args:
        guess: (N,) the class guessed from the n0 selection draws.
        counts_for_guess: (N,) how many of the n estimation draws gave that class.
        n, sigma, alpha: as in CERTIFY.

    Returns:
        (predictions (N,) int64 with -1 for abstain, radii (N,) float64 with 0 for abstain).
    """
    p_lower = clopper_pearson_lower(counts_for_guess, n, alpha)
    certified = p_lower > 0.5
    radii = np.where(certified, smoothing_radius(np.where(certified, p_lower, 1.0), sigma), 0.0)
    predictions = np.where(certified, np.asarray(guess, dtype=np.int64), -1)
    return predictions.astype(np.int64), radii.astype(np.float64)


def predict_from_counts(counts, alpha: float) -> np.ndarray:
    """The decision of PREDICT (Cohen et al., 2019): top class unless a two-sided binomial test
    of its count against the runner-up's (null p = 1/2) fails to reject at level alpha.

    Args:
        counts: (N, C) class counts of the n noise draws.

    Returns:
        (N,) int64 predictions, -1 for abstain. Ties between classes go to the smaller index.
    """
    counts = np.asarray(counts, dtype=np.int64)
    # A stable sort keeps the smaller class index first among equal counts.
    order = np.argsort(-counts, axis=1, kind="stable")
    top, second = order[:, 0], order[:, 1]
    rows = np.arange(len(counts))
    n_a, n_b = counts[rows, top], counts[rows, second]
    out = np.full(len(counts), -1, dtype=np.int64)
    for i in range(len(counts)):  # one binomial test per example, not per noise draw
        if binomtest(int(n_a[i]), int(n_a[i] + n_b[i]), 0.5).pvalue <= alpha:
            out[i] = top[i]
    return out


def min_samples_to_certify(alpha: float) -> int:
    """The smallest n for which n correct draws out of n give a lower bound above 1/2.

    With all n draws on one class the bound is alpha ** (1 / n), so n must exceed
    log2(1 / alpha); any smaller n abstains on every input whatever the model does.
    """
    n = max(1, int(math.floor(math.log2(1.0 / alpha))))
    while clopper_pearson_lower(n, n, alpha) <= 0.5:
        n += 1
    while n > 1 and clopper_pearson_lower(n - 1, n - 1, alpha) > 0.5:
        n -= 1
    return n


def max_certifiable_radius(n: int, sigma: float, alpha: float) -> float:
    """The largest radius CERTIFY can ever return with n draws (all of them on the guess)."""
    return float(np.nan_to_num(smoothing_radius(clopper_pearson_lower(n, n, alpha), sigma), nan=0.0))


def certified_accuracy(radii, correct, thresholds) -> dict[str, float]:
    """Share of examples predicted correctly with a certified radius >= r, for each r.

    Args:
        radii: (N,) certified radii (0 where abstained).
        correct: (N,) bool, prediction == label (False where abstained).
        thresholds: radii r to report.
    """
    radii = np.asarray(radii, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    if len(radii) == 0:
        return {str(float(r)): 0.0 for r in thresholds}
    return {str(float(r)): float(np.mean(correct & (radii >= r))) for r in thresholds}
