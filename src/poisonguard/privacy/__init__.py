"""Differentially private training as a poisoning defence: DP-SGD (Opacus) and gradient shaping."""

from poisonguard.privacy.accounting import ACCOUNTANTS, check_delta, check_epsilon, default_delta, epsilon_spent
from poisonguard.privacy.compat import make_dp_compatible
from poisonguard.privacy.dp_sgd import DPSGD
from poisonguard.privacy.engine import GRAD_SAMPLE_MODES
from poisonguard.privacy.registry import TRAINERS
from poisonguard.privacy.shaping import GradientShaping

__all__ = ["ACCOUNTANTS", "DPSGD", "GRAD_SAMPLE_MODES", "GradientShaping", "TRAINERS", "check_delta",
           "check_epsilon", "default_delta", "epsilon_spent", "make_dp_compatible"]
