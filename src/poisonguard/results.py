"""The frozen dataclasses every method returns; `to_dict()` gives the report-JSON form.

Fields marked `field(metadata={"json": False})` (tensors such as reconstructed masks) are
kept on the object for Python users but left out of the JSON.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


def to_jsonable(value: Any) -> Any:
    """Turn tensors, arrays, tuples and nested dataclasses into JSON-ready values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: to_jsonable(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.metadata.get("json", True)
        }
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


class _ToDict:
    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)


@dataclass(frozen=True)
class Evaluation(_ToDict):
    """Clean accuracy on the test set; attack success rate on non-target test images."""

    clean_accuracy: float
    attack_success_rate: float | None = None
    n_clean: int = 0
    n_attack: int = 0


@dataclass(frozen=True)
class Detection(_ToDict):
    """Verdict of a trigger-reconstruction method (one entry of the report's `detections`)."""

    method: str
    backdoored: bool
    flagged_classes: tuple[int, ...]
    anomaly_index: tuple[float, ...]
    seconds: float
    mask_l1: tuple[float, ...] = ()
    threshold: float = 2.0
    extra: dict[str, Any] = field(default_factory=dict)
    # One reconstructed trigger per class, (K, H, W) masks and (K, C, H, W) patterns.
    masks: torch.Tensor | None = field(default=None, metadata={"json": False}, compare=False)
    patterns: torch.Tensor | None = field(default=None, metadata={"json": False}, compare=False)
    # Reconstructed triggers that are not masks (one Trigger per class, e.g. FeatureRE's generators).
    triggers: tuple | None = field(default=None, metadata={"json": False}, compare=False)


@dataclass(frozen=True)
class Repair(_ToDict):
    """Outcome of a backdoor-removal method (one entry of the report's `repairs`)."""

    method: str
    seconds: float
    before: Evaluation
    after: Evaluation
    extra: dict[str, Any] = field(default_factory=dict)
    model: torch.nn.Module | None = field(default=None, metadata={"json": False}, compare=False)


@dataclass(frozen=True)
class Certification(_ToDict):
    """Randomized-smoothing certificate summary (the report's `certification` block)."""

    sigma: float
    n: int
    n0: int
    alpha: float
    certified_accuracy: dict[str, float]
    abstain_rate: float
    seconds_per_example: float
    predictions: tuple[int, ...] = ()
    radii: tuple[float, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PoisoningCertification(_ToDict):
    """Deep Partition Aggregation certificate summary (the report's `poisoning_certification` block).

    `certified_accuracy[b]`: share of test examples predicted correctly whose prediction
    provably survives any b inserted, removed or relabelled training samples.
    """

    method: str
    partitions: int
    clean_accuracy: float
    certified_accuracy: dict[str, float]
    median_certified: float
    seconds: float
    predictions: tuple[int, ...] = ()
    certified: tuple[int, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Privacy(_ToDict):
    """Privacy spent by DP training (the report's `privacy` block)."""

    epsilon: float
    delta: float
    accountant: str
    noise_multiplier: float = 0.0
    max_grad_norm: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RoundResult(_ToDict):
    round: int
    clean_accuracy: float
    attack_success_rate: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Federated(_ToDict):
    """A federated simulation's per-round figures (the report's `federated` block)."""

    aggregator: str
    attack: str
    rounds: tuple[RoundResult, ...]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Sanitization(_ToDict):
    """Poisoned-sample detection over a training set (the report's `sanitization` block).

    `flagged` are 0-based positions in the input's own order; `scores` summarises each
    method; `z` (N,) is every sample's combined score, `method_scores` each method's raw
    scores (N,), both kept off the JSON (they go to scores.npz).
    """

    verdict: str
    flagged: tuple[int, ...]
    targets: tuple[int, ...]
    methods: tuple[str, ...]
    scores: dict[str, Any]
    n_samples: int
    false_positive_rate: float
    cut: float
    class_index: dict[str, float]
    class_threshold: float
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)
    z: np.ndarray | None = field(default=None, metadata={"json": False}, compare=False)
    method_scores: dict[str, np.ndarray] | None = field(default=None, metadata={"json": False}, compare=False)
    method_z: dict[str, np.ndarray] | None = field(default=None, metadata={"json": False}, compare=False)
    model: torch.nn.Module | None = field(default=None, metadata={"json": False}, compare=False)
