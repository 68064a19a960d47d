"""Norm bounding with Gaussian noise (Sun et al., 2019, "Can you really backdoor FL?")."""

from __future__ import annotations

import torch

from poisonguard.federated.aggregators.order_stats import coordinate_median
from poisonguard.federated.aggregators.base import check_updates, register_aggregator, weighted_mean


def clip_rows(x: torch.Tensor, max_norm: float | torch.Tensor) -> torch.Tensor:
    """Scale each row of (n, d) to L2 norm at most `max_norm`."""
    norms = x.norm(dim=1, keepdim=True)
    return x * (max_norm / norms.clamp_min(1e-12)).clamp(max=1.0)


@register_aggregator("norm_bound", needs=("generator",),
                     summary="clip each update's norm, average, add Gaussian noise (Sun et al., 2019)")
def norm_bound(updates: torch.Tensor, weights: torch.Tensor | None = None, *, max_norm: float | None = None,
               sigma: float = 0.001, generator: torch.Generator | None = None,
               info: dict | None = None) -> torch.Tensor:
    """Norm bounding + weak DP (Sun et al., 2019): mean of updates clipped to norm M, plus N(0, sigma^2).

    Args:
        updates: (n, d) client updates.
        weights: (n,) client weights; uniform when None.
        max_norm: the bound M; None uses the median client norm (pass a number to fix it).
        sigma: standard deviation of the Gaussian noise added to every coordinate.
        generator: CPU generator for the noise (seeded runs repeat exactly).

    Returns:
        (d,) aggregated, noised update.
    """
    if max_norm is not None and not max_norm > 0:
        raise ValueError(f"norm_bound: max_norm must be positive, got {max_norm}")
    if sigma < 0:
        raise ValueError(f"norm_bound: sigma must be non-negative, got {sigma}")
    updates, weights = check_updates(updates, weights)
    bound = float(coordinate_median(updates.norm(dim=1, keepdim=True))[0]) if max_norm is None else max_norm
    out = weighted_mean(clip_rows(updates, bound), weights)
    if sigma > 0:
        out = out + sigma * torch.randn(out.shape, generator=generator, dtype=out.dtype).to(out.device)
    if info is not None:
        info["max_norm"] = bound
    return out
