"""Privacy-budget checks and the epsilon a DP-SGD run spends.

Accounting itself is Opacus's (PRV: Gopi et al., 2021; RDP: Mironov, 2017); this module
only validates budgets and re-derives epsilon from (noise multiplier, sample rate, steps)
so the figure in a report can be checked against a fresh accountant.
"""

from __future__ import annotations

import math

from poisonguard.errors import UserError

ACCOUNTANTS = ("prv", "rdp")


# Largest epsilon a noise search is run for. e^100 bounds nothing a user would call private,
# and above about 150 Opacus's PRV accountant overflows (its epsilon saturates near 710), so
# its bisection for the noise never ends: `--dp-epsilon 1000` hung.
MAX_EPSILON = 100.0


def check_epsilon(epsilon: float) -> float:
    """A finite epsilon in (0, MAX_EPSILON], or a ValueError that says why not."""
    epsilon = float(epsilon)
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon must be a positive finite number, got {epsilon:g}")
    if epsilon > MAX_EPSILON:
        raise ValueError(f"epsilon {epsilon:g} is above {MAX_EPSILON:g}, where the guarantee means nothing and the "
                         "accountant cannot find a noise level; train without DP, or ask for a smaller epsilon")
    return epsilon


def check_delta(delta: float, n: int | None = None) -> float:
    """A delta in (0, 1), and below 1/N when the data size N is known.

    A delta of 1/N or more allows a mechanism that publishes one whole training sample
    outright, so it protects nobody (Dwork & Roth, 2014, Sec. 2.3).
    """
    delta = float(delta)
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie strictly between 0 and 1, got {delta:g}")
    if n is not None and delta >= 1 / n:
        raise UserError(f"delta {delta:g} is not below 1/N = {1 / n:.3g} for N = {n} training samples; "
                        f"choose at most {0.1 / n:.1g}")
    return delta


def check_accountant(name: str) -> str:
    key = str(name).strip().lower()
    if key not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {name!r}; known: {', '.join(ACCOUNTANTS)}")
    return key


def default_delta(n: int) -> float:
    """1e-5, or 0.1/N for data sets so large that 1e-5 would not be below 1/N."""
    return min(1e-5, 0.1 / max(n, 1))


def epsilon_spent(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                  accountant: str = "prv") -> float:
    """Epsilon of `steps` Poisson-subsampled Gaussian steps, from a fresh Opacus accountant."""
    from opacus.accountants import create_accountant

    if steps == 0:
        return 0.0
    acc = create_accountant(mechanism=check_accountant(accountant))
    acc.history = [(float(noise_multiplier), float(sample_rate), int(steps))]
    return float(acc.get_epsilon(delta=delta))
