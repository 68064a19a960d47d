"""The architecture registry: `build_model("mnist_cnn", num_classes=10, input_shape=(1, 28, 28))`."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from poisonguard.errors import UserError
from poisonguard.registry import Registry

ARCHITECTURES: Registry[Callable[..., nn.Module]] = Registry("architecture")

# Per-channel statistics used when an architecture normalises internally and the caller
# gives none: MNIST for 1 channel, CIFAR-10 for 3 (models take [0, 1] inputs, DESIGN.md).
DEFAULT_STATS = {
    1: ((0.1307,), (0.3081,)),
    3: ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


class Normalize(nn.Module):
    """(x - mean) / std per channel, so models accept raw [0, 1] images."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def normalizer(channels: int) -> Normalize:
    mean, std = DEFAULT_STATS.get(channels, ((0.5,) * channels, (0.25,) * channels))
    return Normalize(mean, std)


# The kind of input each architecture takes (data.dataset.KINDS); unlisted ones take images.
# An architecture for tables or text registers here beside its ARCHITECTURES entry.
INPUT_KINDS: dict[str, str] = {}
_SHAPE_DIMS = {"image": 3, "tabular": 1, "text": 1}


def input_kind(arch: str) -> str:
    return INPUT_KINDS.get(arch, "image")


def default_architecture(kind: str, input_shape: Sequence[int], purpose: str = "train") -> str:
    """The built-in architecture for data of `kind` (callers keep their own image choices)."""
    for name, k in INPUT_KINDS.items():
        if k == kind:
            return name
    raise UserError(f"no built-in architecture takes {kind} data; pass --arch")


def build_model(arch: str, *, num_classes: int, input_shape: Sequence[int], seed: int | None = None) -> nn.Module:
    """Instantiate a registered architecture for inputs of `input_shape`: (C, H, W) images, (F,) features, (L,) tokens.

    With `seed` the initial weights depend on the seed alone; without it they come from
    torch's global generator, i.e. from whatever ran before in the process (test order,
    earlier models), which made "the same seed" give different models.
    """
    if num_classes < 2:
        raise UserError(f"a classifier needs at least 2 classes, got {num_classes}")
    factory = ARCHITECTURES.get(arch)
    kind = input_kind(arch)
    if len(input_shape) != _SHAPE_DIMS[kind]:
        want = {"image": "(C, H, W) images", "tabular": "(F,) feature vectors", "text": "(L,) token ids"}[kind]
        raise UserError(f"architecture {arch!r} takes {want}, the data's inputs are {tuple(input_shape)}")
    shape = tuple(int(s) for s in input_shape)
    if seed is None:
        return factory(num_classes=num_classes, input_shape=shape)
    with torch.random.fork_rng(devices=[]):  # leave the caller's generator as it was
        torch.manual_seed(seed)
        return factory(num_classes=num_classes, input_shape=shape)
