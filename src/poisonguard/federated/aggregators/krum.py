"""Krum and Multi-Krum (Blanchard et al., 2017), on Gram-matrix pairwise distances."""

from __future__ import annotations

import torch

from poisonguard.federated.aggregators.base import (
    check_f, check_updates, pairwise_sq_distances, register_aggregator, weighted_mean,
)


def check_krum_bound(name: str, n: int, f: int) -> None:
    if n <= 2 * f + 2:
        raise ValueError(f"{name} needs n > 2f + 2 clients (Blanchard et al., 2017): n={n}, f={f}, "
                         f"so at most f={max((n - 3) // 2, 0)} malicious clients for n={n}")


def krum_scores(dist: torch.Tensor, f: int) -> torch.Tensor:
    """Krum score per client: sum of squared distances to its n - f - 2 nearest others.

    Args:
        dist: (n, n) squared distances.
        f: malicious clients tolerated.

    Returns:
        (n,) scores; lower means more central.
    """
    n = dist.shape[0]
    k = max(1, n - f - 2)
    others = dist + torch.diag(torch.full((n,), float("inf"), dtype=dist.dtype, device=dist.device))
    return others.topk(min(k, n - 1), dim=1, largest=False).values.sum(1)


@register_aggregator("krum", summary="the single most central update (Blanchard et al., 2017)")
def krum(updates: torch.Tensor, weights: torch.Tensor | None = None, *, f: int = 1,
         info: dict | None = None) -> torch.Tensor:
    """Krum (Blanchard et al., 2017): the update with the lowest Krum score.

    Args:
        updates: (n, d) client updates; needs n > 2f + 2.
        weights: ignored (Krum picks one update).
        f: malicious clients tolerated.

    Returns:
        (d,) the selected client's update.
    """
    return multi_krum(updates, weights, f=f, m=1, info=info, _name="krum")


@register_aggregator("multi_krum", summary="mean of the m most central updates (Blanchard et al., 2017)")
def multi_krum(updates: torch.Tensor, weights: torch.Tensor | None = None, *, f: int = 1, m: int | None = None,
               info: dict | None = None, _name: str = "multi_krum") -> torch.Tensor:
    """Multi-Krum (Blanchard et al., 2017): the (weighted) mean of the m lowest-scored updates.

    Args:
        updates: (n, d) client updates; needs n > 2f + 2.
        weights: (n,) weights for the mean of the selected updates; uniform when None.
        f: malicious clients tolerated.
        m: updates averaged; default n - f.

    Returns:
        (d,) aggregated update.
    """
    check_f(_name, f)
    updates, weights = check_updates(updates, weights)
    n = updates.shape[0]
    check_krum_bound(_name, n, f)
    m = n - f if m is None else m
    if not 1 <= m <= n:
        raise ValueError(f"{_name}: m must lie in [1, n={n}], got {m}")
    scores = krum_scores(pairwise_sq_distances(updates), f)
    chosen = scores.topk(m, largest=False).indices.sort().values
    if info is not None:
        info["selected"] = chosen.tolist()
        info["scores"] = scores.tolist()
    if m == 1:
        return updates[chosen[0]].clone()
    # Zero weight for the rest: one pass over all rows instead of copying the chosen ones.
    keep = torch.zeros_like(weights)
    keep[chosen] = weights[chosen]
    return weighted_mean(updates, keep)
