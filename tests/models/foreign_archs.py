"""Five small classifiers unlike poisonguard's built-in CNNs, for the format conformance suite.

Each is `name(num_classes=10, in_channels=1, size=8)` so it also serves as
`--arch tests/models/foreign_archs.py:NAME` (the user's own code, typed on the command line).
"""

from __future__ import annotations

import torch
from torch import nn


def bn_dropout(num_classes: int = 10, in_channels: int = 1, size: int = 8) -> nn.Module:
    """Conv + BatchNorm + max pooling, dropout before the head."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(16, num_classes))


def strided_gelu(num_classes: int = 10, in_channels: int = 1, size: int = 8) -> nn.Module:
    """Strided convolutions instead of pooling, GELU activations, a flattening head."""
    side = (size + 1) // 2
    side = (side + 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, stride=2, padding=1), nn.GELU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.GELU(),
        nn.Flatten(), nn.Linear(16 * side * side, num_classes))


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


def residual(num_classes: int = 10, in_channels: int = 1, size: int = 8) -> nn.Module:
    """A stem convolution and one residual block with an identity skip."""
    return nn.Sequential(nn.Conv2d(in_channels, 12, 3, padding=1), nn.ReLU(), _Residual(12),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, num_classes))


def depthwise_separable(num_classes: int = 10, in_channels: int = 1, size: int = 8) -> nn.Module:
    """MobileNet-style depthwise 3x3 + pointwise 1x1 convolutions with ReLU6."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU6(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU6(), nn.Conv2d(16, 24, 1), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, num_classes))


class _MixerBlock(nn.Module):
    def __init__(self, tokens: int, dim: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.token_mlp = nn.Sequential(nn.Linear(tokens, 2 * tokens), nn.GELU(), nn.Linear(2 * tokens, tokens))
        self.channel_mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, tokens, dim)
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.norm2(x))


class Mixer(nn.Module):
    """An MLP-Mixer (Tolstikhin et al., 2021) block on 2x2 patches: LayerNorm, token and channel MLPs."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, size: int = 8, dim: int = 16) -> None:
        super().__init__()
        self.patch = nn.Conv2d(in_channels, dim, 2, stride=2)
        self.block = _MixerBlock((size // 2) ** 2, dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        return self.head(self.norm(self.block(tokens)).mean(1))


def mixer(num_classes: int = 10, in_channels: int = 1, size: int = 8) -> nn.Module:
    return Mixer(num_classes, in_channels, size)


ARCHITECTURES = {"bn_dropout": bn_dropout, "strided_gelu": strided_gelu, "residual": residual,
                 "depthwise_separable": depthwise_separable, "mixer": mixer}
