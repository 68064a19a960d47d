"""Certified robustness: randomized smoothing (Cohen et al., 2019) and Deep Partition
Aggregation (Levine & Feizi, 2021)."""

from poisonguard.certify.registry import CERTIFIERS
from poisonguard.certify.smoothing import RandomizedSmoothing, SmoothedClassifier

__all__ = ["CERTIFIERS", "RandomizedSmoothing", "SmoothedClassifier"]
