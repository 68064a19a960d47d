"""Table models a user writes, for `benchmarks/tabular_scan_architectures.py` (and `--arch
benchmarks/user_table_models.py:residual --arch-kwargs num_classes=K,width=F`).

Each keeps its own feature scaling as buffers that its owner sets from the data after building
it (so `build` alone gives mean 0, std 1), as a user's model loaded with `--arch file.py:build`
does: poisonguard's references rebuilt from this code keep the suspect's buffers.
"""

from __future__ import annotations

import torch
from torch import nn


class Residual(nn.Module):
    """A user's model: fixed scaling buffers, a LayerNorm/GELU residual block."""

    def __init__(self, width: int, classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("std", torch.ones(width))
        self.inp = nn.Linear(width, 48)
        self.block = nn.Sequential(nn.LayerNorm(48), nn.GELU(), nn.Linear(48, 48))
        self.head = nn.Sequential(nn.GELU(), nn.Linear(48, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp((x - self.mean) / self.std)
        return self.head(h + self.block(h))


class BatchNormNet(nn.Module):
    """A user's model: BatchNorm, LeakyReLU, dropout, its own scaling buffers."""

    def __init__(self, width: int, classes: int) -> None:
        super().__init__()
        self.register_buffer("mu", torch.zeros(width))
        self.register_buffer("sd", torch.ones(width))
        self.net = nn.Sequential(nn.Linear(width, 100), nn.BatchNorm1d(100), nn.LeakyReLU(0.1), nn.Dropout(0.1),
                                 nn.Linear(100, 50), nn.LeakyReLU(0.1), nn.Linear(50, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mu) / self.sd)


def residual(num_classes: int, width: int) -> nn.Module:
    return Residual(width, num_classes)


def batchnorm(num_classes: int, width: int) -> nn.Module:
    return BatchNormNet(width, num_classes)
