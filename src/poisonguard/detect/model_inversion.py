"""Model inversion (Fredrikson et al., 2015), the first step of DeepInspect: synthesise
inputs of every class from the model alone, so trigger search needs no training data.

All classes are optimised at once: n images per class start from seeded noise (in tanh
space) and descend CE(f(x), c) + a total-variation prior (natural images are smooth) +
a small L2 pull towards mid-grey (keeps them away from saturated adversarial noise).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from poisonguard.detect.engine import from_tanh_space, to_tanh_space


def _tv(x: torch.Tensor) -> torch.Tensor:
    """Mean anisotropic total variation per image: (N, C, H, W) -> (N,)."""
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
    return dh + dw


def invert_classes(model: nn.Module, *, num_classes: int, input_shape: tuple[int, int, int], per_class: int = 10,
                   steps: int = 150, lr: float = 0.05, tv_weight: float = 0.5, l2_weight: float = 0.05,
                   seed: int = 0, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Synthesised images (K*n, C, H, W) in [0, 1] and their classes (K*n,), K = num_classes.

    `model` must be frozen (no parameter gradients) and in eval mode.
    """
    gen = torch.Generator().manual_seed(seed)
    n = num_classes * per_class
    start = 0.5 + 0.2 * (torch.rand(n, *input_shape, generator=gen) - 0.5)
    w = to_tanh_space(start).to(device).requires_grad_(True)
    labels = torch.arange(num_classes).repeat_interleave(per_class).to(device)
    opt = torch.optim.Adam([w], lr=lr)
    for _ in range(steps):
        x = from_tanh_space(w)
        loss = (F.cross_entropy(model(x), labels, reduction="none") + tv_weight * _tv(x)
                + l2_weight * (x - 0.5).pow(2).flatten(1).mean(1))
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
    return from_tanh_space(w).detach(), labels
