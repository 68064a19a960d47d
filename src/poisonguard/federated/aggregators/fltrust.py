"""FLTrust (Cao, Fang, Liu & Gong, 2021): trust scores from a server root-set update."""

from __future__ import annotations

import torch

from poisonguard.federated.aggregators.base import check_updates, register_aggregator


@register_aggregator("fltrust", needs=("root_update",),
                     summary="cosine trust against a server root-set update (Cao et al., 2021)")
def fltrust(updates: torch.Tensor, weights: torch.Tensor | None = None, *, root_update: torch.Tensor | None = None,
            info: dict | None = None) -> torch.Tensor:
    """FLTrust: sum_i TS_i * (||g0|| / ||g_i||) g_i / sum_i TS_i with TS_i = ReLU(cos(g_i, g0)).

    Args:
        updates: (n, d) client updates g_i.
        weights: ignored (trust scores replace data-size weights in the paper).
        root_update: (d,) the server's own update g0 from its small clean root data set.

    Returns:
        (d,) aggregated update; zeros when no client has positive trust.
    """
    if root_update is None:
        raise ValueError("fltrust needs the server's root-set update (root_update)")
    updates, _ = check_updates(updates, weights)
    g0 = root_update.to(updates).reshape(-1)
    if g0.shape[0] != updates.shape[1]:
        raise ValueError(f"fltrust: root update has {g0.shape[0]} parameters, client updates {updates.shape[1]}")
    g0_norm = g0.norm()
    norms = updates.norm(dim=1).clamp_min(1e-12)
    trust = torch.relu((updates @ g0) / (norms * g0_norm.clamp_min(1e-12)))
    if info is not None:
        info["trust"] = trust.tolist()
    if float(trust.sum()) == 0.0:
        return torch.zeros_like(g0)
    return (trust * g0_norm / norms) @ updates / trust.sum()
