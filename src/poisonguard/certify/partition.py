"""Deep Partition Aggregation math (Levine & Feizi, 2021), as plain functions.

- `hash_partition`: each training image goes to partition h(image) mod K, with h a
  SHA-256 of the image's 8-bit pixels. The label and the sample's position play no part,
  so inserting, removing or relabelling one sample changes exactly one partition.
- `plurality_vote`: the ensemble's answer, ties going to the smaller class index.
- `dpa_certificate`: Theorem 1 of Levine & Feizi (2021),
  rho(x) = floor((n_c - max_{c' != c} (n_{c'} + 1[c' < c])) / 2), c the vote's winner:
  each poisoned sample can move at most one base model's vote, which shrinks the
  (tie-break adjusted) lead by at most 2.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
import torch

HASH_NAME = "sha256-uint8-v1"


def image_hash(image: torch.Tensor) -> int:
    """A 64-bit hash of one (C, H, W) image in [0, 1], from its 8-bit quantised pixels.

    Quantising first keeps the hash stable across float round-off (e.g. a PNG round trip).
    """
    pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().contiguous().numpy()
    shape = np.asarray(pixels.shape, dtype=np.int64).tobytes()
    return int.from_bytes(hashlib.sha256(shape + pixels.tobytes()).digest()[:8], "little")


def hash_partition(x: torch.Tensor, k: int) -> torch.Tensor:
    """Partition index in [0, k) for each image of x (N, C, H, W); returns (N,) int64."""
    if k < 1:
        raise ValueError(f"the number of partitions must be at least 1, got {k}")
    return torch.tensor([image_hash(img) % k for img in x], dtype=torch.int64)


def plurality_vote(votes: torch.Tensor) -> torch.Tensor:
    """Winner per row of (N, C) vote counts; torch.argmax returns the first (smallest) maximal class."""
    return votes.argmax(dim=1)


def dpa_certificate(votes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Prediction and certified poisoning size per example (Levine & Feizi, 2021, Theorem 1).

    Args:
        votes: (N, C) number of base models voting for each class.

    Returns:
        (predictions (N,) int64, certified (N,) int64): the prediction provably stays the
        same when at most `certified` training samples are inserted, removed or relabelled.
    """
    votes = votes.to(torch.int64)
    n, c = votes.shape
    pred = plurality_vote(votes)
    top = votes.gather(1, pred[:, None])  # (N, 1)
    classes = torch.arange(c)[None, :]
    # A rival with a smaller index wins ties, so it needs one vote less to overtake.
    rival = votes + (classes < pred[:, None]).to(torch.int64)
    rival = rival.masked_fill(classes == pred[:, None], torch.iinfo(torch.int64).min)
    gap = top[:, 0] - rival.max(dim=1).values
    return pred, torch.div(gap, 2, rounding_mode="floor").clamp(min=-1)


def certified_accuracy_at(pred: torch.Tensor, certified: torch.Tensor, labels: torch.Tensor,
                          budgets: Sequence[int]) -> dict[str, float]:
    """Share of examples predicted correctly and certified against at least b poisoned samples."""
    correct = pred == labels
    if len(labels) == 0:
        return {str(int(b)): 0.0 for b in budgets}
    return {str(int(b)): float((correct & (certified >= b)).float().mean()) for b in budgets}
