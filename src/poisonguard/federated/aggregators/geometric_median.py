"""Geometric median by the smoothed Weiszfeld algorithm (RFA; Pillutla, Kakade & Harchaoui, 2022)."""

from __future__ import annotations

import torch

from poisonguard.federated.aggregators.base import check_updates, register_aggregator


@register_aggregator("geometric_median", summary="smoothed Weiszfeld geometric median (RFA, Pillutla et al., 2022)")
def geometric_median(updates: torch.Tensor, weights: torch.Tensor | None = None, *, nu: float = 1e-6,
                     max_iter: int = 100, tol: float = 1e-6, info: dict | None = None) -> torch.Tensor:
    """Weighted geometric median argmin_v sum_i a_i max(nu, ||v - x_i||), RFA's Algorithm 3.

    Each step is v <- sum_i b_i x_i / sum_i b_i with b_i = a_i / max(nu, ||v - x_i||); the
    smoothing nu keeps a step defined when v lands on a client's update. Starts at the
    weighted mean; stops when the objective improves by less than `tol` (relative).

    Args:
        updates: (n, d) client updates.
        weights: (n,) the a_i; uniform when None.
        nu: smoothing (> 0).
        max_iter: Weiszfeld steps at most.
        tol: relative objective change that stops the iteration.

    Returns:
        (d,) the geometric median.
    """
    if not nu > 0:
        raise ValueError(f"geometric_median: nu must be positive, got {nu}")
    if max_iter < 1:
        raise ValueError(f"geometric_median: max_iter must be at least 1, got {max_iter}")
    updates, alphas = check_updates(updates, weights)
    v = alphas @ updates
    objective = (alphas * (updates - v).norm(dim=1).clamp_min(nu)).sum()
    steps = 0
    for steps in range(1, max_iter + 1):
        dist = (updates - v).norm(dim=1).clamp_min(nu)
        betas = alphas / dist
        v = (betas / betas.sum()) @ updates
        new_objective = (alphas * (updates - v).norm(dim=1).clamp_min(nu)).sum()
        done = float(objective - new_objective) <= tol * float(new_objective)
        objective = new_objective
        if done:
            break
    if info is not None:
        info["iterations"] = steps
    return v
