"""In-memory image data: float tensors in [0, 1] (N, C, H, W) with integer labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from poisonguard.errors import UserError


@dataclass(frozen=True)
class ImageData:
    """Images `x` (N, C, H, W) float32 in [0, 1], labels `y` (N,) int64, and class names."""

    x: torch.Tensor
    y: torch.Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.x.ndim != 4:
            raise UserError(f"images must have shape (N, C, H, W), got {tuple(self.x.shape)}")
        if self.x.shape[0] != self.y.shape[0]:
            raise UserError(f"{self.x.shape[0]} images but {self.y.shape[0]} labels")
        if len(self.y) and (int(self.y.min()) < 0 or int(self.y.max()) >= len(self.classes)):
            raise UserError(f"labels must lie in [0, {len(self.classes) - 1}]")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.x.shape[1:])  # type: ignore[return-value]

    def subset(self, index: torch.Tensor | np.ndarray) -> "ImageData":
        index = torch.as_tensor(index, dtype=torch.long)
        return ImageData(self.x[index], self.y[index], self.classes)


@dataclass(frozen=True)
class Splits:
    """A named data set with its train and test parts."""

    name: str
    train: ImageData
    test: ImageData

    @property
    def classes(self) -> tuple[str, ...]:
        return self.train.classes

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.train.input_shape


def stratified_split(
    y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a seeded split that keeps every class's share in both parts."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        rng.shuffle(idx)
        n_test = int(round(len(idx) * test_fraction))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    train_idx, test_idx = np.concatenate(train), np.concatenate(test)
    rng.shuffle(train_idx)
    rng.shuffle(test_idx)
    return train_idx, test_idx


def per_class_subset(
    data: ImageData, *, fraction: float | None = None, per_class: int | None = None, seed: int = 0
) -> ImageData:
    """A seeded subset with `fraction` of each class (at least one image), or `per_class` images.

    This is the "limited clean data" that repair and detection methods get: e.g.
    `per_class_subset(train, fraction=0.05)` is 5% of the training data, balanced.
    """
    if (fraction is None) == (per_class is None):
        raise UserError("give exactly one of fraction and per_class")
    if fraction is not None and not 0 < fraction <= 1:
        raise UserError(f"clean fraction must lie in (0, 1], got {fraction}")
    if per_class is not None and per_class < 1:
        raise UserError(f"per_class must be at least 1, got {per_class}")
    if len(data) == 0:
        raise UserError("cannot take a subset of an empty data set")
    rng = np.random.default_rng(seed)
    labels = data.y.numpy()
    chosen = []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        take = per_class if per_class is not None else max(1, int(round(len(idx) * fraction)))
        chosen.append(rng.permutation(idx)[: min(take, len(idx))])
    index = np.sort(np.concatenate(chosen))
    return data.subset(index)


def from_uint8(images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...]) -> ImageData:
    """Build ImageData from uint8 (N, C, H, W) images."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    y = torch.from_numpy(np.asarray(labels).astype(np.int64))
    return ImageData(x, y, classes)
