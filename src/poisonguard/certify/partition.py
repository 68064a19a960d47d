"""Deep Partition Aggregation math (Levine & Feizi, 2021), as plain functions.

- `hash_partition`: each training sample goes to partition h(sample) mod K, with h a
  SHA-256 of an image's 8-bit pixels, or of a table row's (or token ids') exact values.
  The label and the sample's position play no part, so inserting, removing or relabelling
  one sample changes exactly one partition.
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

HASH_NAME = "sha256-uint8-v1"  # images
RAW_HASH_NAME = "sha256-raw-v1"  # table rows (float32 in raw units) and token ids (int64)


def hash_name(x: torch.Tensor) -> str:
    """The hash `hash_partition` uses for inputs x (N, ...), as recorded in an ensemble's metadata."""
    return HASH_NAME if x.ndim == 4 else RAW_HASH_NAME


def sample_hash(sample: torch.Tensor) -> int:
    """A 64-bit hash of one sample: a (C, H, W) image in [0, 1] from its 8-bit quantised pixels
    (stable across float round-off, e.g. a PNG round trip); a table row or token ids from their
    exact values (a row in raw units is what its file says: clamping it to [0, 1] as a picture
    put most rows of a table in one partition)."""
    sample = sample.detach().cpu()
    if sample.ndim == 3:
        values = (sample.float().clamp(0, 1) * 255).round().to(torch.uint8).contiguous().numpy()
    elif sample.dtype.is_floating_point:
        values = (sample.float() + 0.0).contiguous().numpy()  # + 0.0: -0.0 and 0.0 are one value
    else:
        values = sample.to(torch.int64).contiguous().numpy()
    shape = np.asarray(values.shape, dtype=np.int64).tobytes()
    return int.from_bytes(hashlib.sha256(shape + values.tobytes()).digest()[:8], "little")


def hash_partition(x: torch.Tensor, k: int) -> torch.Tensor:
    """Partition index in [0, k) for each sample of x (N, ...); returns (N,) int64."""
    if k < 1:
        raise ValueError(f"the number of partitions must be at least 1, got {k}")
    return torch.tensor([sample_hash(sample) % k for sample in x], dtype=torch.int64)


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
