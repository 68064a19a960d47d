"""Penultimate representations: the input of a model's last `nn.Linear`, streamed in batches.

The representation methods (spectral signatures, SPECTRE, SCAn) all read the layer before
the classifier head. A forward pre-hook on the last registered `nn.Linear` captures its input
batch by batch, so the images are never copied whole and only (N, D) features are kept; this
works on every built-in architecture and on any `nn.Module` whose head is a final Linear.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from poisonguard.errors import UserError
from poisonguard.utils import batches, model_device

log = logging.getLogger(__name__)


def last_linear(model: nn.Module) -> nn.Linear | None:
    """The last `nn.Linear` in registration order (the classifier head of ordinary models)."""
    found = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            found = module
    return found


@torch.no_grad()
def penultimate_features(model: nn.Module, x: torch.Tensor, *, batch_size: int = 256) -> np.ndarray:
    """(N, D) float32 inputs of the model's last Linear for images x (N, C, H, W).

    A model without a reachable Linear (e.g. TorchScript, whose submodules take no hooks)
    falls back to its logits, which still carry the class structure the methods need.
    """
    head = last_linear(model)
    captured: list[torch.Tensor] = []
    handle = None
    if head is not None:
        try:
            handle = head.register_forward_pre_hook(lambda _m, inputs: captured.append(inputs[0].detach().flatten(1).float().cpu()))
        except (RuntimeError, AttributeError):  # scripted modules refuse Python hooks
            handle = None
    if handle is None:
        log.warning("sanitize: no hookable final Linear in the model; using its logits as representations")
    device = model_device(model)
    was_training = model.training
    model.eval()
    out = []
    try:
        for sl in batches(len(x), batch_size):
            logits = model(x[sl].to(device))
            if handle is not None:
                if len(captured) != 1:
                    raise UserError("the model's last Linear ran more than once per batch; cannot read its input as the representation")
                out.append(captured.pop())
            else:
                out.append(logits.detach().flatten(1).float().cpu())
    finally:
        if handle is not None:
            handle.remove()
        model.train(was_training)
    feats = torch.cat(out).numpy() if out else np.zeros((0, 1), np.float32)
    if not np.isfinite(feats).all():
        raise UserError("the model's representations contain NaN or Inf")
    return feats


@torch.no_grad()
def per_sample_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 512) -> np.ndarray:
    """Cross-entropy of every sample (N,), in batches."""
    device = model_device(model)
    was_training = model.training
    model.eval()
    out = []
    for sl in batches(len(x), batch_size):
        logits = model(x[sl].to(device))
        out.append(nn.functional.cross_entropy(logits.float(), y[sl].to(device), reduction="none").cpu())
    model.train(was_training)
    return torch.cat(out).numpy()
