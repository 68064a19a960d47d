"""Centered clipping (Karimireddy, He & Jaggi, 2021)."""

from __future__ import annotations

import torch

from poisonguard.federated.aggregators.order_stats import coordinate_median
from poisonguard.federated.aggregators.base import check_updates, register_aggregator


@register_aggregator("centered_clipping", needs=("center",),
                     summary="clip updates around the last aggregate (Karimireddy et al., 2021)")
def centered_clipping(updates: torch.Tensor, weights: torch.Tensor | None = None, *, tau: float | None = None,
                      iters: int = 1, center: torch.Tensor | None = None, info: dict | None = None) -> torch.Tensor:
    """Centered clipping: v <- v + sum_i w_i (x_i - v) min(1, tau / ||x_i - v||), `iters` times.

    Karimireddy et al. (2021) start from the previous round's aggregate (their momentum), so a
    malicious update can move the result by at most tau * (its weight) per round.

    Args:
        updates: (n, d) client updates.
        weights: (n,) client weights; uniform when None (the paper's 1/n).
        tau: clipping radius; None uses the median distance of the updates to the centre
            (our default for when update norms are unknown; pass a number to fix it).
        iters: clipping iterations (the paper's L; 1 suffices with a good centre).
        center: (d,) starting point, the previous aggregate; zeros when None.

    Returns:
        (d,) aggregated update.
    """
    if tau is not None and not tau > 0:
        raise ValueError(f"centered_clipping: tau must be positive, got {tau}")
    if iters < 1:
        raise ValueError(f"centered_clipping: iters must be at least 1, got {iters}")
    updates, weights = check_updates(updates, weights)
    v = torch.zeros_like(updates[0]) if center is None else center.to(updates)
    if v.shape != updates[0].shape:
        raise ValueError(f"centered_clipping: center has shape {tuple(v.shape)}, updates have {tuple(updates[0].shape)}")
    radius = tau
    for _ in range(iters):
        diff = updates - v
        norms = diff.norm(dim=1)
        radius = float(coordinate_median(norms[:, None])[0]) if tau is None else tau
        scale = (radius / norms.clamp_min(1e-12)).clamp(max=1.0)
        v = v + (weights * scale) @ diff
    if info is not None:
        info["tau"] = radius
    return v
