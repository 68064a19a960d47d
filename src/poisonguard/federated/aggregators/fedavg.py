"""FedAvg: the weighted mean of client updates (McMahan et al., 2017)."""

from __future__ import annotations

import torch

from poisonguard.federated.aggregators.base import check_updates, register_aggregator, weighted_mean


@register_aggregator("fedavg", summary="weighted mean (McMahan et al., 2017); not robust")
def fedavg(updates: torch.Tensor, weights: torch.Tensor | None = None, *, info: dict | None = None) -> torch.Tensor:
    """Weighted mean of client updates (McMahan et al., 2017).

    Args:
        updates: (n, d) client updates.
        weights: (n,) client weights (e.g. local data sizes); uniform when None.

    Returns:
        (d,) aggregated update.
    """
    updates, weights = check_updates(updates, weights)
    return weighted_mean(updates, weights)
