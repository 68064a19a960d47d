"""Certified robustness: randomized smoothing (Cohen et al., 2019) and Deep Partition
Aggregation (Levine & Feizi, 2021)."""

from poisonguard.certify.registry import CERTIFIERS
from poisonguard.certify.smoothing import RandomizedSmoothing, SmoothedClassifier

__all__ = ["CERTIFIERS", "RandomizedSmoothing", "SmoothedClassifier"]

# `poisonguard.certify(model, x, y, ...)` is the Python API function of the same name (poisonguard.api).
from poisonguard.api import callable_package  # noqa: E402

callable_package(__name__)
