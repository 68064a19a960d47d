"""Nearest-neighbour mixing, a pre-aggregation step (Allouah et al., 2023, "Fixing by Mixing")."""

from __future__ import annotations

import torch

from poisonguard.federated.aggregators.base import check_f, check_updates, pairwise_sq_distances


def nnm(updates: torch.Tensor, *, f: int) -> torch.Tensor:
    """Replace each update by the mean of its n - f nearest updates (itself included).

    Args:
        updates: (n, d) client updates; needs n > f.
        f: malicious clients tolerated.

    Returns:
        (n, d) mixed updates, to be passed to any aggregation rule.
    """
    check_f("nnm", f)
    updates, _ = check_updates(updates)
    n = updates.shape[0]
    if n <= f:
        raise ValueError(f"nnm needs n > f clients (n={n}, f={f})")
    dist = pairwise_sq_distances(updates)
    # Self-distance is 0, so each row's own update is always among its neighbours.
    dist.fill_diagonal_(-1.0)
    neighbours = dist.topk(n - f, dim=1, largest=False).indices  # (n, n - f)
    mixing = torch.zeros(n, n, dtype=updates.dtype, device=updates.device)
    mixing.scatter_(1, neighbours, 1.0 / (n - f))
    return mixing @ updates
