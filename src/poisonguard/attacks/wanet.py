"""WaNet (Nguyen & Tran, 2021): an imperceptible backdoor made of a smooth image warp."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from poisonguard.attacks.triggers import WarpTrigger
from poisonguard.errors import UserError


def wanet_trigger(
    input_shape: tuple[int, int, int], *, target: int, k: int = 4, strength: float = 0.5, seed: int = 0
) -> WarpTrigger:
    """Random k x k control field, normalised by its mean magnitude, bicubically upsampled.

    `strength` is WaNet's s; the flow is s * field / H in grid coordinates, as in the paper.
    """
    _, h, w = input_shape
    if k < 2 or k > min(h, w):
        raise UserError(f"WaNet grid size k must lie in [2, {min(h, w)}], got {k}")
    if strength <= 0:
        raise UserError(f"WaNet strength must be positive, got {strength}")
    gen = torch.Generator().manual_seed(seed)
    control = torch.rand(1, 2, k, k, generator=gen) * 2 - 1
    control = control / control.abs().mean()
    field = F.interpolate(control, size=(h, w), mode="bicubic", align_corners=True)
    flow = strength * field[0].permute(1, 2, 0) / h
    return WarpTrigger(flow, target)


def noise_warp(trigger: WarpTrigger, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """WaNet's "noise mode": the trigger warp plus random per-pixel jitter, label kept.

    Training on these teaches the model that only the exact warp is the trigger, which is
    what makes WaNet hard for detectors that look for any warp.
    """
    n, _, h, w = x.shape
    jitter = (torch.rand(n, h, w, 2, generator=generator) * 2 - 1) / h
    return trigger.apply(x, extra=jitter)
