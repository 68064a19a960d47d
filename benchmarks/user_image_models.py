"""Image models a user writes, for `benchmarks/image_scan_architectures.py` (and `--arch
benchmarks/user_image_models.py:vggish` on a state dict of one).

None is ours and none was tuned against poisonguard: each keeps the input normalisation
its owner fixed as buffers (as `torchvision.transforms.Normalize` inside a model does), one uses
batch norm and max pooling, the other group norm, SiLU, a strided residual block and dropout.
"""

from __future__ import annotations

import torch
from torch import nn

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # the values every MNIST tutorial normalises with


class Normalised(nn.Module):
    """The owner's normalisation as buffers, then the network."""

    def __init__(self, net: nn.Module, channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.full((1, channels, 1, 1), MNIST_MEAN))
        self.register_buffer("std", torch.full((1, channels, 1, 1), MNIST_STD))
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def vggish(num_classes: int = 10, channels: int = 1) -> nn.Module:
    """VGG-style: conv-BN-ReLU and max pool, two conv-BN-ReLU and max pool, global average pooling, a linear head."""
    net = nn.Sequential(_conv_bn(channels, 16), nn.MaxPool2d(2), _conv_bn(16, 32),
                        _conv_bn(32, 32), nn.MaxPool2d(2),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))
    return Normalised(net, channels)


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(4, cout), nn.SiLU(),
                                  nn.Conv2d(cout, cout, 3, 1, 1), nn.GroupNorm(4, cout))
        self.skip = nn.Conv2d(cin, cout, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.silu(self.body(x) + self.skip(x))


def resgn(num_classes: int = 10, channels: int = 1) -> nn.Module:
    """A strided stem, two residual blocks (one strided) with group norm and SiLU, dropout, a linear head."""
    net = nn.Sequential(nn.Conv2d(channels, 16, 3, stride=2, padding=1), nn.SiLU(), _Block(16, 32, 2), _Block(32, 32, 1),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(32, num_classes))
    return Normalised(net, channels)


# Written in session 19 after the stand-in rule was chosen on vggish and resgn, and run only to
# report it: a depthwise-separable net with a flattened head (no global pooling), and a net of
# fully connected layers only.

def _separable(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.Hardswish(),
                         nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.Hardswish())


def mobile(num_classes: int = 10, channels: int = 1) -> nn.Module:
    """MobileNet-style: a conv stem, three depthwise-separable blocks (two strided), flattened into a linear head."""
    net = nn.Sequential(nn.Conv2d(channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.Hardswish(),
                        _separable(16, 32, 2), _separable(32, 32, 1), _separable(32, 48, 2),
                        nn.Flatten(), nn.Linear(48 * 7 * 7, num_classes))
    return Normalised(net, channels)


def dense(num_classes: int = 10, channels: int = 1, side: int = 28) -> nn.Module:
    """Fully connected only: 784 -> 256 -> 128 -> classes, GELU and layer norm."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(channels * side * side, 256), nn.GELU(), nn.LayerNorm(256),
                        nn.Linear(256, 128), nn.GELU(), nn.Linear(128, num_classes))
    return Normalised(net, channels)


# Written in session 20 after the smallest-gap test was chosen, and run only to report it: a
# vision transformer (patch embedding, learned positions, pre-norm encoder, class token).

class _PatchTransformer(nn.Module):
    def __init__(self, num_classes: int, channels: int, side: int, patch: int = 7, dim: int = 64, depth: int = 2) -> None:
        super().__init__()
        self.embed = nn.Conv2d(channels, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(0.02 * torch.randn(1, (side // patch) ** 2 + 1, dim))
        layer = nn.TransformerEncoderLayer(dim, nhead=4, dim_feedforward=2 * dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], 1) + self.pos
        return self.head(self.norm(self.encoder(tokens)[:, 0]))


def patchvit(num_classes: int = 10, channels: int = 1, side: int = 28) -> nn.Module:
    """A tiny vision transformer: 7x7 patches, 2 pre-norm encoder layers of width 64, a class token."""
    return Normalised(_PatchTransformer(num_classes, channels, side), channels)
