"""What every detector shares: checking the model and data, and building the Detection."""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from poisonguard.data import ImageData
from poisonguard.errors import UserError
from poisonguard.results import Detection
from poisonguard.utils import resolve_device


def check_inputs(model: nn.Module, data: ImageData | None, *, needs_data: bool, name: str,
                 input_shape=None, num_classes: int | None = None, min_classes: int = 3) -> tuple[tuple[int, ...], int]:
    """UserError unless `model` is a classifier with finite outputs for `data`'s images.

    Returns (input_shape, num_classes). Data-free methods pass `input_shape` (and optionally
    `num_classes`) instead of data. `min_classes` is 3 for a method whose own rule is an outlier
    test over classes; 2 for one the calibrated verdict judges (reference_contrast).
    """
    if not isinstance(model, nn.Module):
        raise UserError(f"{name}: expected a torch.nn.Module, got {type(model).__name__}")
    if data is None:
        if needs_data:
            raise UserError(f"{name} needs clean data (--data); only data-free methods such as deepinspect work with --data none")
        if input_shape is None:
            raise UserError(f"{name}: without data, give the model's input_shape")
    else:
        if len(data) == 0:
            raise UserError(f"{name}: the clean data is empty")
        if input_shape is not None and tuple(input_shape) != tuple(data.input_shape):
            raise UserError(f"{name}: the model takes inputs {tuple(input_shape)} but the data has {data.input_shape}")
        input_shape = data.input_shape
        num_classes = num_classes or data.num_classes
    input_shape = tuple(int(s) for s in input_shape)
    probe = data.x[:4] if data is not None else torch.rand(4, *input_shape, generator=torch.Generator().manual_seed(0))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad():
            was_training = model.training
            model.eval()
            out = model(probe.to(device))
            model.train(was_training)
    except Exception as exc:  # a shape mismatch surfaces as one of many error types
        from poisonguard.models.formats import first_line

        raise UserError(f"{name}: the model does not accept inputs of shape {input_shape}: {first_line(exc)}") from exc
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"{name}: the model is not a classifier: output {shape}, expected (N, classes)")
    if num_classes is not None and out.shape[1] != num_classes:
        raise UserError(f"{name}: the model has {out.shape[1]} outputs but the data has {num_classes} classes")
    if out.shape[1] < min_classes:
        raise UserError(f"{name}: an outlier test over classes needs at least 3 classes, the model has {out.shape[1]}"
                        + ("; two-class models are judged by reference_contrast against clean reference models"
                           if out.shape[1] == 2 else ""))
    if not torch.isfinite(out).all():
        raise UserError(f"{name}: the model's output contains NaN or Inf")
    return input_shape, int(out.shape[1])


def check_finite(name: str, *tensors: torch.Tensor) -> None:
    """NaN during optimisation means the model itself misbehaves on some inputs."""
    for t in tensors:
        if not torch.isfinite(t).all():
            raise UserError(f"{name}: the model produced NaN or Inf while the trigger was optimised")


def device_for(device: str) -> torch.device:
    return resolve_device(device)


def check_number(name: str, value, *, low=None, high=None, integer: bool = False) -> None:
    """ValueError with a clear message unless `value` is a finite number within bounds."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if integer:
        ok = ok and float(value).is_integer()
    if ok and low is not None:
        ok = value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bounds = f" in [{low}, {high}]" if high is not None else (f" >= {low}" if low is not None else "")
        raise ValueError(f"{name} must be a {'whole ' if integer else ''}number{bounds}, got {value!r}")


def clean_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of images x (N, C, H, W) classified as y (N,): `poisonguard.metrics.predict`, the one implementation."""
    from poisonguard.metrics import predict

    return float((predict(model, x) == y.cpu()).float().mean()) if len(x) else 0.0


def make_detection(method: str, *, index: torch.Tensor, flagged: list[int], start: float, sizes: torch.Tensor,
                   masks: torch.Tensor | None, patterns: torch.Tensor | None, threshold: float, extra: dict,
                   triggers: tuple | None = None) -> Detection:
    return Detection(
        method=method,
        backdoored=bool(flagged),
        flagged_classes=tuple(int(c) for c in flagged),
        anomaly_index=tuple(float(v) for v in index),
        seconds=round(time.perf_counter() - start, 3),
        mask_l1=tuple(float(v) for v in sizes),
        threshold=float(threshold),
        extra=extra,
        masks=masks,
        patterns=patterns,
        triggers=triggers,
    )
