"""Small models and data slices shared by the privacy tests (kept tiny: DP-SGD is slow on CPU)."""

from __future__ import annotations

import torch
from torch import nn


def tiny_net(channels: int = 1, classes: int = 10) -> nn.Module:
    """One strided conv and one linear layer for 28x28 inputs: both per-sample-gradient kinds, fast."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(channels, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 13 * 13, classes))


def bn_net() -> nn.Module:
    """A net with BatchNorm, which DP-SGD cannot use as it is (Opacus swaps it for GroupNorm)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 13 * 13, 10))


class ScaleWithStats(nn.Module):
    """A trainable layer that keeps running statistics in a buffer: nothing can make it private."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.register_buffer("running", torch.zeros(1))

    def forward(self, x):
        if self.training:
            self.running.mul_(0.9).add_(0.1 * x.detach().mean())
        return x * self.scale


def stateful_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(ScaleWithStats(), nn.Flatten(), nn.Linear(28 * 28, 10))
