"""Architecture registry and safe loading/saving of model files."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from poisonguard.errors import UserError
from poisonguard.models import preact_resnet, resnet_cifar, small_cnn  # noqa: F401  (register architectures)
from poisonguard.models.files import LoadedModel, load_model, metadata_path, save_model
from poisonguard.models.registry import ARCHITECTURES, Normalize, build_model

__all__ = [
    "ARCHITECTURES", "LoadedModel", "Normalize", "build_model", "check_classifier",
    "load_model", "metadata_path", "save_model",
]


@torch.no_grad()
def check_classifier(model: nn.Module, input_shape: Sequence[int], num_classes: int) -> None:
    """Raise UserError unless `model` maps (N, *input_shape) to finite (N, num_classes) logits."""
    from poisonguard.utils import model_device

    probe = torch.rand(2, *input_shape, generator=torch.Generator().manual_seed(0)).to(model_device(model))
    was_training = model.training
    model.eval()
    try:
        out = model(probe)
    except Exception as exc:  # a shape mismatch surfaces as one of many error types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"the model does not accept inputs of shape {tuple(input_shape)}: {first}") from exc
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"the model is not a classifier: output {shape}, expected (N, classes)")
    if out.shape[1] != num_classes:
        raise UserError(f"the model has {out.shape[1]} outputs but the data has {num_classes} classes")
    if not torch.isfinite(out).all():
        raise UserError("the model's output contains NaN or Inf")
