"""What every poisoned-sample detector shares: the inputs it scores and its registry.

A method is a class with keyword-only hyperparameters (checked with `ValueError`) and
`score(inputs) -> np.ndarray` of shape (N,), one suspicion score per training sample,
higher = more likely poisoned. The scores are raw (each method's own scale); turning them
into a verdict and a cut happens once, in `calibrate.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from poisonguard.data import ImageData
from poisonguard.registry import Registry

SANITIZERS: Registry[type] = Registry("sanitization method")


@dataclass
class ScoringInputs:
    """What the methods read; each takes only what it needs.

    Attributes:
        data: the training samples being judged, in the input's own order.
        features: (N, D) float32 penultimate representations of `data` under `model`.
        model: the model trained on `data` (or the user's --model), eval mode.
        reference: held-out inputs assumed clean (the source's test part), or None.
        reference_features: (M, D) representations of `reference`, or None.
        train_model: a factory returning a fresh untrained model for `data` (ABL trains its own).
        seed, device: as everywhere.
    """

    data: ImageData
    features: np.ndarray | None = None
    reference_features: np.ndarray | None = None
    model: nn.Module | None = None
    reference: ImageData | None = None
    train_model: Callable[[], nn.Module] | None = None
    seed: int = 0
    device: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)


class Method:
    """Base of the methods: `needs` says what `ScoringInputs` fields must be set."""

    name = "method"
    paper = ""
    needs: tuple[str, ...] = ("features",)
    # Per-class scores (computed within each label's samples) are standardised per class.
    per_class = True
    # True when `score` already returns z-scores against the clean bulk (no further calibration).
    calibrated = False

    def score(self, inputs: ScoringInputs) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def class_stats(self, z: np.ndarray, labels: np.ndarray) -> dict[int, float]:
        """Per-class statistic the verdict compares across classes: the class's upper-tail z."""
        from poisonguard.sanitize.calibrate import tail_statistic

        return tail_statistic(z, labels)

    def heldout_scores(self) -> dict[int, np.ndarray]:
        """After `score`: each class's held-out samples scored on the training z scale, where the
        method can (the class gate's held-out test reads them); {} where it cannot."""
        return {}

    def paper_flags(self, scores: np.ndarray, labels: np.ndarray, expected_rate: float) -> np.ndarray:
        """Positions the paper's own fixed rule would remove (`Sanitizer(rule="paper")`)."""
        raise NotImplementedError

    def summary(self) -> dict[str, Any]:
        """Hyperparameters for the report."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


def check_number(name: str, value, *, low=None, high=None, integer: bool = False, open_low: bool = False) -> None:
    """ValueError unless `value` is a finite number within the bounds."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and integer:
        ok = float(value).is_integer()
    if ok and low is not None:
        ok = value > low if open_low else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bound = f" {'>' if open_low else '>='} {low}" if low is not None else ""
        bound += f" and <= {high}" if high is not None else ""
        raise ValueError(f"{name} must be a finite {'integer' if integer else 'number'}{bound}, got {value!r}")


def class_indices(labels: np.ndarray) -> dict[int, np.ndarray]:
    """{class: positions of its samples}, classes in increasing order."""
    return {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}


def top_components(x: np.ndarray, k: int) -> np.ndarray:
    """Project centred rows of x (n, d) onto their top-k principal directions -> (n, k)."""
    centred = x - x.mean(0, keepdims=True)
    k = max(1, min(k, *centred.shape))
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:k].T


def as_numpy_labels(data: ImageData) -> np.ndarray:
    return data.y.numpy() if isinstance(data.y, torch.Tensor) else np.asarray(data.y)
