"""Fixtures for the sanitize tests."""

from __future__ import annotations

import pytest

from poisonguard.data import per_class_subset


@pytest.fixture(scope="session")
def small_clean(mnist):
    return per_class_subset(mnist.train, per_class=150, seed=5)
