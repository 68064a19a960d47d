"""Coordinate-wise trimmed mean (Yin et al., 2018)."""

from __future__ import annotations

import torch

from poisonguard.federated.aggregators.base import check_f, check_updates, register_aggregator
from poisonguard.federated.aggregators.order_stats import coordinate_trimmed_mean


@register_aggregator("trimmed_mean", summary="coordinate-wise trimmed mean (Yin et al., 2018)")
def trimmed_mean(updates: torch.Tensor, weights: torch.Tensor | None = None, *, f: int = 1,
                 info: dict | None = None) -> torch.Tensor:
    """Per coordinate, drop the f largest and f smallest values and average the rest (Yin et al., 2018).

    Args:
        updates: (n, d) client updates; needs n > 2f.
        weights: ignored (the paper's rule is unweighted).
        f: values trimmed at each end (the paper's beta * n).

    Returns:
        (d,) trimmed mean.
    """
    check_f("trimmed_mean", f)
    updates, _ = check_updates(updates, weights)
    n = updates.shape[0]
    if n <= 2 * f:
        raise ValueError(f"trimmed_mean needs n > 2f clients (n={n}, f={f})")
    return coordinate_trimmed_mean(updates, f)
