"""The epsilon DP-SGD reports is the accountant's, re-derived independently."""

from __future__ import annotations

import math

import numpy as np
import pytest

from poisonguard.errors import UserError
from poisonguard.privacy import DPSGD, GradientShaping, check_delta, check_epsilon, epsilon_spent
from privacy_helpers import tiny_net


@pytest.fixture(scope="module")
def small(mnist):
    return mnist.train.subset(np.arange(256))


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_reported_epsilon_equals_a_fresh_opacus_accountant(small, accountant):
    from opacus.accountants import create_accountant
    from opacus.accountants.utils import get_noise_multiplier

    target, delta = 4.0, 1e-4
    _, privacy = DPSGD(epsilon=target, delta=delta, epochs=2, batch_size=64, accountant=accountant,
                       device="cpu").fit(tiny_net(), small)
    extra = privacy.extra
    assert extra["sample_rate"] == pytest.approx(64 / 256)
    assert extra["steps"] == 2 * 4  # epochs x 1/q logical steps, whatever the physical batching
    assert privacy.noise_multiplier == pytest.approx(get_noise_multiplier(
        target_epsilon=target, target_delta=delta, sample_rate=0.25, epochs=2, accountant=accountant))
    fresh = create_accountant(mechanism=accountant)
    fresh.history = [(privacy.noise_multiplier, 0.25, 8)]
    assert privacy.epsilon == pytest.approx(fresh.get_epsilon(delta=delta), rel=1e-6)
    assert privacy.epsilon == pytest.approx(epsilon_spent(noise_multiplier=privacy.noise_multiplier,
                                                          sample_rate=0.25, steps=8, delta=delta,
                                                          accountant=accountant), rel=1e-6)
    # Opacus searches sigma to within 0.01 of the target, from below.
    assert target - 0.05 <= privacy.epsilon <= target + 1e-6
    assert privacy.accountant == accountant and privacy.delta == delta
    assert privacy.to_dict()["epsilon"] == pytest.approx(privacy.epsilon)


def _rdp_full_batch_epsilon(sigma: float, steps: int, delta: float) -> float:
    """Hand formula: the Gaussian mechanism's RDP is alpha / (2 sigma^2) per step (Mironov, 2017),
    converted with the bound of Balle et al. (2020) that Opacus uses, minimised on a fine alpha grid."""
    alphas = np.linspace(1.01, 200, 200_000)
    rdp = steps * alphas / (2 * sigma**2)
    eps = rdp + np.log1p(-1 / alphas) - (np.log(delta) + np.log(alphas)) / (alphas - 1)
    return float(eps.min())


def test_rdp_epsilon_matches_the_hand_formula_without_subsampling(small):
    # batch = N gives sample rate 1: no subsampling amplification, so the closed form applies.
    delta = 1e-3
    _, privacy = DPSGD(epsilon=20.0, delta=delta, epochs=3, batch_size=len(small), accountant="rdp",
                       device="cpu").fit(tiny_net(), small)
    assert privacy.extra["sample_rate"] == 1.0 and privacy.extra["steps"] == 3
    hand = _rdp_full_batch_epsilon(privacy.noise_multiplier, 3, delta)
    # Opacus minimises over a coarser alpha grid, so it may only be slightly larger.
    assert hand <= privacy.epsilon <= hand * 1.02


@pytest.mark.parametrize("bad", [0, -1, math.inf, math.nan, 1000])  # 1000: the noise search never ended
def test_bad_epsilon_is_a_value_error(bad):
    with pytest.raises(ValueError, match="epsilon"):
        DPSGD(epsilon=bad)
    with pytest.raises(ValueError):
        check_epsilon(bad)


@pytest.mark.parametrize("bad", [0, 1, 1.5, -1e-5])
def test_delta_outside_zero_one_is_a_value_error(bad):
    with pytest.raises(ValueError, match="delta"):
        DPSGD(epsilon=1, delta=bad)


def test_delta_not_below_one_over_n_is_refused(small):
    assert check_delta(1e-3, 999) == 1e-3
    with pytest.raises(UserError, match="1/N"):
        check_delta(1e-3, 1000)
    with pytest.raises(UserError, match="1/N"):
        DPSGD(epsilon=1, delta=1 / 256, device="cpu").fit(tiny_net(), small)


@pytest.mark.parametrize("kwargs, word", [
    ({"accountant": "gdpx"}, "accountant"), ({"grad_sample_mode": "magic"}, "grad-sample"),
    ({"max_grad_norm": 0}, "max_grad_norm"), ({"epochs": 0}, "epochs"), ({"batch_size": 0}, "batch size"),
    ({"optimizer": "lbfgs"}, "optimizer"), ({"lr": -1.0}, "learning rate")])
def test_constructor_checks_hyperparameters(kwargs, word):
    with pytest.raises(ValueError, match=word):
        DPSGD(epsilon=1, **kwargs)
    if "accountant" not in kwargs:
        with pytest.raises(ValueError, match=word):
            GradientShaping(**kwargs)
    with pytest.raises(ValueError, match="noise"):
        GradientShaping(noise_multiplier=-0.1)
