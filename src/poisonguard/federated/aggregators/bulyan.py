"""Bulyan (El Mhamdi et al., 2018): iterated Krum selection, then a trimmed coordinate mean."""

from __future__ import annotations

import torch

from poisonguard.federated.aggregators.base import (
    check_f, check_updates, pairwise_sq_distances, register_aggregator,
)
from poisonguard.federated.aggregators.krum import krum_scores
from poisonguard.federated.aggregators.order_stats import mean_closest_to_median


def bulyan_select(dist: torch.Tensor, f: int, theta: int) -> list[int]:
    """Pick theta clients one at a time, each the Krum choice among those not yet picked.

    The (n, n) distance matrix is computed once; each step only re-scores a sub-matrix.
    """
    remaining = list(range(dist.shape[0]))
    chosen: list[int] = []
    for _ in range(theta):
        idx = torch.tensor(remaining, device=dist.device)
        sub = dist[idx][:, idx]
        scores = krum_scores(sub, f) if len(remaining) > 1 else torch.zeros(1)
        best = remaining[int(scores.argmin())]
        chosen.append(best)
        remaining.remove(best)
    return chosen


@register_aggregator("bulyan", summary="Krum selection + trimmed coordinate mean (El Mhamdi et al., 2018)")
def bulyan(updates: torch.Tensor, weights: torch.Tensor | None = None, *, f: int = 1,
           info: dict | None = None) -> torch.Tensor:
    """Bulyan (El Mhamdi et al., 2018) with Krum as the selection rule.

    Selects theta = n - 2f updates by repeated Krum, then per coordinate averages the
    beta = theta - 2f selected values closest to the coordinate's median.

    Args:
        updates: (n, d) client updates; needs n >= 4f + 3.
        weights: ignored (the paper's rule is unweighted).
        f: malicious clients tolerated.

    Returns:
        (d,) aggregated update.
    """
    check_f("bulyan", f)
    updates, _ = check_updates(updates, weights)
    n = updates.shape[0]
    if n < 4 * f + 3:
        raise ValueError(f"bulyan needs n >= 4f + 3 clients (El Mhamdi et al., 2018): n={n}, f={f}, "
                         f"so at most f={max((n - 3) // 4, 0)} malicious clients for n={n}")
    theta = n - 2 * f
    beta = theta - 2 * f
    chosen = bulyan_select(pairwise_sq_distances(updates), f, theta)
    if info is not None:
        info["selected"] = sorted(chosen)
    selected = updates[torch.tensor(chosen, device=updates.device)]
    return mean_closest_to_median(selected, beta)
