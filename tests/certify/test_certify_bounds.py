"""Certificate math against hand-computed answers and its statistical guarantee."""

import math

import numpy as np
import pytest
from scipy.stats import norm

from poisonguard.certify import bounds


def test_clopper_pearson_all_correct_is_alpha_root():
    # With k = n the Beta(n, 1) alpha-quantile is alpha ** (1 / n).
    for n in (10, 100, 10_000):
        assert bounds.clopper_pearson_lower(n, n, 0.001) == pytest.approx(0.001 ** (1 / n), rel=1e-9)
    assert bounds.clopper_pearson_lower(0, 50, 0.01) == 0.0


def test_clopper_pearson_matches_two_sided_interval_at_2alpha():
    from scipy.stats import beta

    k, n, alpha = 83, 100, 0.05
    assert bounds.clopper_pearson_lower(k, n, alpha) == pytest.approx(beta.ppf(alpha, k, n - k + 1))
    assert bounds.clopper_pearson_upper(k, n, alpha) == pytest.approx(beta.ppf(1 - alpha, k + 1, n - k))


def test_radius_and_abstain():
    assert bounds.smoothing_radius(norm.cdf(1.0), 0.5) == pytest.approx(0.5)
    assert np.isnan(bounds.smoothing_radius(0.5, 0.5))
    pred, radius = bounds.certify_from_counts([3, 4], [1000, 400], 1000, 0.25, 0.001)
    assert pred.tolist() == [3, -1] and radius[1] == 0.0
    assert radius[0] == pytest.approx(0.25 * norm.ppf(0.001 ** (1 / 1000)))


def test_min_samples_to_certify():
    assert bounds.min_samples_to_certify(0.001) == 10  # 0.001 ** (1/10) = 0.501 > 1/2 >= 0.001 ** (1/9)
    assert bounds.min_samples_to_certify(0.25) == 3  # exactly 1/2 at n = 2 does not certify
    for alpha in (0.3, 0.05, 1e-3, 1e-6):
        n = bounds.min_samples_to_certify(alpha)
        assert alpha ** (1 / n) > 0.5 >= alpha ** (1 / (n - 1)) or n == 1


def test_predict_from_counts_binomial_test_and_ties():
    counts = np.array([[60, 40, 0], [90, 10, 0], [0, 50, 50], [5, 5, 90]])
    out = bounds.predict_from_counts(counts, 0.01)
    # 60 vs 40: p = 0.057 > 0.01 abstains; 90 vs 10 rejects; tie abstains; 90 vs 5 rejects.
    assert out.tolist() == [-1, 0, -1, 2]


def test_certified_accuracy_counts_only_correct_and_certified():
    acc = bounds.certified_accuracy([0.0, 0.3, 0.6, 0.6], [False, True, True, False], [0.0, 0.25, 0.5, 1.0])
    assert acc == {"0.0": 0.5, "0.25": 0.5, "0.5": 0.25, "1.0": 0.0}


def test_lower_bound_exceeds_true_p_at_most_alpha_of_the_time():
    """Coverage of the one-sided Clopper-Pearson bound over many simulated certifications."""
    rng = np.random.default_rng(0)
    alpha, n, reps = 0.05, 200, 200_000
    for p in (0.6, 0.9, 0.99):
        k = rng.binomial(n, p, size=reps)
        rate = np.mean(bounds.clopper_pearson_lower(k, n, alpha) > p)
        assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / reps)
