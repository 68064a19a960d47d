"""Coordinate-wise median (Yin et al., 2018)."""

from __future__ import annotations

import torch

from poisonguard.federated.aggregators.base import check_updates, register_aggregator


def coordinate_median(x: torch.Tensor) -> torch.Tensor:
    """Exact per-column median of (n, d) -> (d,); the mean of the two middle values when n is even.

    torch.median returns the lower middle value, which is not the statistical median for even
    n; the lower median of x and of -x give the two middle values.
    """
    n = x.shape[0]
    if n % 2 == 1:
        return x.median(dim=0).values
    # Lower median of x and of -x (= minus the upper median): two selections, no full sort.
    return 0.5 * (x.median(dim=0).values - x.neg().median(dim=0).values)


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
