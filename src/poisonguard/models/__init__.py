"""Architecture registry, model handles and safe loading/saving of model files."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from poisonguard.errors import UserError
from poisonguard.models import cifar_cnn, mlp, preact_resnet, resnet_cifar, small_cnn  # noqa: F401  (register architectures)
from poisonguard.models.files import load_model, metadata_path, save_model
from poisonguard.models.handle import LoadedModel, as_eager, copy_module, frozen_copy, module_kind, set_eval, supports_hooks
from poisonguard.models.registry import ARCHITECTURES, Normalize, build_model

__all__ = [
    "ARCHITECTURES", "LoadedModel", "Normalize", "as_eager", "build_model", "check_classifier", "copy_module",
    "frozen_copy", "load_model", "metadata_path", "module_kind", "save_model", "set_eval", "supports_hooks",
]


@torch.no_grad()
def check_classifier(model: nn.Module, input_shape: Sequence[int], num_classes: int) -> None:
    """Raise UserError unless `model` maps (N, *input_shape) to finite (N, num_classes) logits."""
    from poisonguard.utils import model_device

    probe = torch.rand(2, *input_shape, generator=torch.Generator().manual_seed(0)).to(model_device(model))
    was_training = model.training
    set_eval(model)
    try:
        out = model(probe)
    except Exception as exc:  # a shape mismatch surfaces as one of many error types, over many lines
        from poisonguard.models.formats import first_line

        raise UserError(f"the model does not accept inputs of shape {tuple(input_shape)}: {first_line(exc)}") from exc
    finally:
        if was_training and module_kind(model) != "export":
            model.train()
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != probe.shape[0]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"the model is not a classifier for this data: output {shape} for {probe.shape[0]} inputs, "
                        "expected (N, classes)")
    if out.shape[1] != num_classes:
        single = (" (--binary-output logit or probability reads one output as two classes)"
                  if out.shape[1] == 1 and num_classes == 2 else "")
        raise UserError(f"the model has {out.shape[1]} outputs but the data has {num_classes} classes{single}")
    if not torch.isfinite(out).all():
        raise UserError("the model's output contains NaN or Inf")
