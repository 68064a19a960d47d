"""FLAME (Nguyen et al., 2022): HDBSCAN on cosine distances, adaptive clipping, noise."""

from __future__ import annotations

import numpy as np
import torch

from poisonguard.federated.aggregators.order_stats import coordinate_median
from poisonguard.federated.aggregators.base import check_updates, register_aggregator
from poisonguard.federated.aggregators.norm_bound import clip_rows


def cosine_distances(x: torch.Tensor) -> torch.Tensor:
    """1 - cos(x_i, x_j) for rows of (n, d) -> (n, n), in float64 for HDBSCAN."""
    unit = x.double() / x.double().norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (1 - unit @ unit.T).clamp_min(0).fill_diagonal_(0)


def flame_admitted(x: torch.Tensor) -> list[int]:
    """Clients in FLAME's majority cluster: HDBSCAN(min_cluster_size = n/2 + 1) on cosine distances.

    With no cluster found (every client labelled noise) all are admitted and the clipping
    and noise still bound the damage.
    """
    from sklearn.cluster import HDBSCAN

    n = x.shape[0]
    if n < 3:
        return list(range(n))
    labels = HDBSCAN(metric="precomputed", min_cluster_size=n // 2 + 1, min_samples=1,
                     allow_single_cluster=True, copy=False).fit(cosine_distances(x).cpu().numpy()).labels_
    clustered = labels[labels >= 0]
    if clustered.size == 0:
        return list(range(n))
    majority = np.bincount(clustered).argmax()
    return np.flatnonzero(labels == majority).tolist()


@register_aggregator("flame", needs=("generator",),
                     summary="HDBSCAN filter + median-norm clipping + noise (Nguyen et al., 2022)")
def flame(updates: torch.Tensor, weights: torch.Tensor | None = None, *, noise_lambda: float = 0.001,
          generator: torch.Generator | None = None, info: dict | None = None) -> torch.Tensor:
    """FLAME (Nguyen et al., 2022).

    1. HDBSCAN (min cluster size n/2 + 1) on pairwise cosine distances; the majority cluster
       is admitted. We cluster the updates W_i - G rather than the local models W_i: the
       cosine between whole models is dominated by the shared global model.
    2. Clipping bound S = median L2 norm of all updates; admitted updates clipped to S.
    3. Mean of the clipped admitted updates plus N(0, (lambda * S)^2) on every coordinate.

    Args:
        updates: (n, d) client updates.
        weights: ignored (the paper averages admitted updates uniformly).
        noise_lambda: the paper's lambda (0.001 for image classification).
        generator: CPU generator for the noise.

    Returns:
        (d,) aggregated update.
    """
    if noise_lambda < 0:
        raise ValueError(f"flame: noise_lambda must be non-negative, got {noise_lambda}")
    updates, _ = check_updates(updates, weights)
    admitted = flame_admitted(updates)
    bound = coordinate_median(updates.norm(dim=1, keepdim=True))[0]
    out = clip_rows(updates[admitted], bound).mean(0)
    if noise_lambda > 0:
        out = out + noise_lambda * float(bound) * torch.randn(out.shape, generator=generator, dtype=out.dtype).to(out.device)
    if info is not None:
        info["selected"] = admitted
        info["clip_norm"] = float(bound)
    return out
