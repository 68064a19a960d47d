"""CIFAR ResNets (He et al., 2016) as Cohen, Rosenfeld & Kolter (2019) used for randomized
smoothing: ResNet-110 = 3 stages of 18 basic blocks (16, 32, 64 channels), with the input
normalisation inside the model so Gaussian noise goes on the [0, 1] image."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from poisonguard.models.registry import ARCHITECTURES, normalizer


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class CifarResNet(nn.Module):
    """Inputs (N, C, 32, 32) in [0, 1]; depth = 6 * blocks + 2."""

    def __init__(self, depth: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
        blocks = (depth - 2) // 6
        self.normalize = normalizer(in_channels)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            stage = []
            for s in [stride] + [1] * (blocks - 1):
                stage.append(BasicBlock(in_planes, planes, s))
                in_planes = planes
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


@ARCHITECTURES.register("resnet110")
def resnet110(*, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    return CifarResNet(110, num_classes, input_shape[0])


@ARCHITECTURES.register("resnet20")
def resnet20(*, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """The 20-layer sibling: the same code path, small enough for CPU tests."""
    return CifarResNet(20, num_classes, input_shape[0])
