"""Coordinate-wise median (Yin et al., 2018)."""

from __future__ import annotations

import torch

from poisonguard.federated.aggregators.base import check_updates, register_aggregator
from poisonguard.federated.aggregators.order_stats import coordinate_median


@register_aggregator("median", summary="coordinate-wise median (Yin et al., 2018)")
def median(updates: torch.Tensor, weights: torch.Tensor | None = None, *, info: dict | None = None) -> torch.Tensor:
    """Coordinate-wise median of client updates (Yin et al., 2018).

    Args:
        updates: (n, d) client updates.
        weights: ignored, as in the paper: an order statistic has no weighted form there.

    Returns:
        (d,) per-coordinate median.
    """
    updates, _ = check_updates(updates, weights)
    return coordinate_median(updates)
