"""Channels-last memory layout for a frozen image model, where it computes the same function.

On the CPU, oneDNN's convolutions run faster on NHWC tensors than on NCHW ones. The detectors
push thousands of batches through a frozen model and back to its input. Forward and backward
to the input, 2 CPU threads, batch 32-128, measured back to back in session 10
(benchmarks/results/issue-16.md): ResNet-20 0.80x the time, the CIFAR CNN 0.69-0.87x, the
MNIST CNN 0.68-0.74x, LeNet-5 0.61-0.67x.

The layout is invisible to every operator except the few that read strides. `view` refuses
a non-contiguous tensor, and a user's `x.view(x.size(0), -1)` after a convolution is common.
So the converted copy is kept only when a forward pass on a probe batch runs and gives the
same logits, to float rounding, as the model in its own layout. Otherwise the model is
returned to its own layout.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

_RTOL, _ATOL = 1e-4, 1e-5


def _has_2d_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


@torch.no_grad()
def use_channels_last(model: nn.Module, input_shape: tuple[int, ...], device: torch.device) -> bool:
    """Convert an eval-mode `model` taking (N, C, H, W) inputs to channels-last in place, if it
    gives the same logits on a probe batch; returns whether it was converted."""
    if device.type != "cpu" or len(input_shape) != 3 or not _has_2d_conv(model):
        return False  # measured on the CPU only; tables and text have no image layout
    probe = torch.rand((4, *input_shape), generator=torch.Generator().manual_seed(0)).to(device)
    try:
        before = model(probe)
        model.to(memory_format=torch.channels_last)
        after = model(probe.contiguous(memory_format=torch.channels_last))
        same = (isinstance(before, torch.Tensor) and isinstance(after, torch.Tensor)
                and before.shape == after.shape and torch.allclose(before, after, rtol=_RTOL, atol=_ATOL))
    except Exception as exc:  # a stride-reading op (`view`) in the user's forward: keep its own layout
        log.debug("channels-last layout not used: %s", str(exc).splitlines()[0][:200])
        same = False
    if not same:
        model.to(memory_format=torch.contiguous_format)
    return same
