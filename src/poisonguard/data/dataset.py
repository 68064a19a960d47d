"""In-memory labelled data of three kinds: images, tables and token sequences.

The contract every family reads (one type, `ImageData`, whose name predates the other kinds;
`Data` is the same class):

- `kind="image"`: `x` (N, C, H, W) float32 in [0, 1]; `meta` is None.
- `kind="tabular"`: `x` (N, F) float32 in raw feature units (F counts the columns after
  one-hot encoding); `meta` is a `TableInfo`: feature names, each feature's observed
  [low, high] on the training data, and how each source column was encoded. Models take
  the raw features and do their own scaling inside (the built-in `mlp` standardises).
- `kind="text"`: `x` (N, L) int64 token ids; `meta` is the text loader's record
  (its tokenizer); the text family defines it.

`y` (N,) int64 labels in [0, K) and `classes` (K names) are the same for every kind.
`subset` and `dataclasses.replace` keep `kind` and `meta`, so a poisoned or cleansed copy
stays the same kind of data. `input_bounds(data)` gives the box every input lives in:
[0, 1] for images, the per-feature observed [low, high] for tables (what trigger
inversion clamps to); `input_space(data)` names it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from poisonguard.errors import UserError

KINDS = ("image", "tabular", "text")
_NDIM = {"image": 4, "tabular": 2, "text": 2}
_SHAPE_NAME = {"image": "(N, C, H, W)", "tabular": "(N, F)", "text": "(N, L)"}


@dataclass(frozen=True)
class ColumnCode:
    """How one source column became features: numeric (one feature) or one-hot categorical.

    `start` is the column's first feature index; a categorical column fills
    `len(categories)` features, in the order of `categories` (sorted strings).
    """

    name: str
    kind: str  # "numeric" or "categorical"
    start: int
    categories: tuple[str, ...] = ()

    @property
    def width(self) -> int:
        return len(self.categories) if self.kind == "categorical" else 1

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "start": self.start, "categories": list(self.categories)}


@dataclass(frozen=True)
class TableInfo:
    """What a tabular data set's features are: names, observed ranges, encoding.

    low/high (F,) float32 are each feature's minimum and maximum over the training rows:
    the box scan's inversion searches and triggers must stay in. `columns` records the
    encoding (so a cleansed table can be written back as the user's columns).
    """

    feature_names: tuple[str, ...]
    low: torch.Tensor
    high: torch.Tensor
    columns: tuple[ColumnCode, ...] = ()
    label_column: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        f = len(self.feature_names)
        if tuple(self.low.shape) != (f,) or tuple(self.high.shape) != (f,):
            raise UserError(f"feature ranges must have shape ({f},), got {tuple(self.low.shape)} and {tuple(self.high.shape)}")
        if not (torch.isfinite(self.low).all() and torch.isfinite(self.high).all()) or (self.low > self.high).any():
            raise UserError("feature ranges must be finite with low <= high")

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

    @classmethod
    def observed(cls, x: torch.Tensor, feature_names, **kw) -> "TableInfo":
        """Ranges observed on `x` (N, F)."""
        if len(x) == 0:
            raise UserError("cannot take feature ranges of an empty table")
        return cls(tuple(feature_names), x.min(0).values.float().clone(), x.max(0).values.float().clone(), **kw)

    def to_dict(self) -> dict[str, Any]:
        return {"feature_names": list(self.feature_names), "low": self.low.tolist(), "high": self.high.tolist(),
                "columns": [c.to_dict() for c in self.columns], "label_column": self.label_column,
                "source": self.source}


def readable_names(names, where: str) -> tuple[str, ...]:
    """File and folder names as class names: bytes that are not UTF-8 (which Python keeps as
    lone surrogates, and which crashed the report's charts) shown as U+FFFD. Two names that
    differ only in such bytes would become one class: refused."""
    shown = tuple(n.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for n in names)
    if len(set(shown)) < len(set(names)):
        raise UserError(f"{where}: class names differ only in bytes that are not UTF-8; rename them")
    return shown


def label_order(names) -> tuple[str, ...]:
    """Class names in index order: by number when every name is a number ("2" before "10"),
    else sorted as text. A table's and a text corpus's labels both follow it, so `--target 2`
    means the class named 2."""
    import math

    def number(name: str) -> float | None:
        try:
            value = float(name)
        except ValueError:
            return None
        return value if math.isfinite(value) else None

    names = set(names)
    numbers = {n: number(n) for n in names}
    if all(v is not None for v in numbers.values()):
        return tuple(sorted(names, key=lambda n: (numbers[n], n)))
    return tuple(sorted(names))


UNLABELLED = -1  # the label of an input whose class nobody knows (run-time inputs to `filter`)


@dataclass(frozen=True)
class ImageData:
    """Labelled inputs `x`, labels `y` (N,) int64, class names, and the data's `kind`.

    See the module docstring for the shape and range of `x` per kind.
    """

    x: torch.Tensor
    y: torch.Tensor
    classes: tuple[str, ...]
    kind: str = "image"
    meta: Any = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"data kind must be one of {KINDS}, got {self.kind!r}")
        if self.x.ndim != _NDIM[self.kind]:
            what = "images" if self.kind == "image" else f"{self.kind} inputs"
            raise UserError(f"{what} must have shape {_SHAPE_NAME[self.kind]}, got {tuple(self.x.shape)}")
        if self.kind == "tabular" and isinstance(self.meta, TableInfo) and self.meta.num_features != self.x.shape[1]:
            raise UserError(f"the table has {self.x.shape[1]} features but its metadata names {self.meta.num_features}")
        if self.x.shape[0] != self.y.shape[0]:
            raise UserError(f"{self.x.shape[0]} {'images' if self.kind == 'image' else 'rows'} but {self.y.shape[0]} labels")
        if not self.classes:  # unlabelled inputs (data.rows.load_inputs): every label is UNLABELLED
            if bool((self.y != UNLABELLED).any()):
                raise UserError("inputs without class names must have no labels")
        elif len(self.y) and (int(self.y.min()) < 0 or int(self.y.max()) >= len(self.classes)):
            raise UserError(f"labels must lie in [0, {len(self.classes) - 1}]")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(C, H, W) for images, (F,) for tables, (L,) for text."""
        return tuple(int(s) for s in self.x.shape[1:])

    def subset(self, index: torch.Tensor | np.ndarray) -> "ImageData":
        index = torch.as_tensor(index, dtype=torch.long)
        return ImageData(self.x[index], self.y[index], self.classes, self.kind, self.meta)

    def with_(self, *, x: torch.Tensor | None = None, y: torch.Tensor | None = None) -> "ImageData":
        """The same kind of data (classes, meta kept) with new inputs and/or labels."""
        return ImageData(self.x if x is None else x, self.y if y is None else y, self.classes, self.kind, self.meta)


Data = ImageData  # the kind-neutral name


def input_bounds(data: ImageData) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) of every input value, each of the input's shape without the batch axis.

    Images: 0 and 1 everywhere. Tables: the observed per-feature range (from `meta`, else
    from the rows themselves). Text has no box (token ids are not continuous): ValueError.
    """
    if data.kind == "image":
        shape = data.input_shape
        return torch.zeros(shape), torch.ones(shape)
    if data.kind == "tabular":
        if isinstance(data.meta, TableInfo):
            return data.meta.low.clone(), data.meta.high.clone()
        if len(data) == 0:
            raise UserError("an empty table has no feature ranges")
        return data.x.min(0).values.float(), data.x.max(0).values.float()
    raise ValueError("text inputs are token ids and have no value bounds")


def input_space(data: ImageData) -> str:
    """Words for the box of `input_bounds` (reports)."""
    return {"image": "[0, 1] pixels", "tabular": "each feature's observed [min, max] in raw units",
            "text": "token ids"}[data.kind]


@dataclass(frozen=True)
class NamedSplits:
    """A named data set's train and test parts, of any data type that has `classes` and `num_classes`."""

    name: str
    train: Any
    test: Any

    @property
    def classes(self) -> tuple[str, ...]:
        return self.train.classes

    @property
    def num_classes(self) -> int:
        return self.train.num_classes


@dataclass(frozen=True)
class Splits(NamedSplits):
    """A named data set of arrays (images or table rows) with its train and test parts."""

    train: ImageData
    test: ImageData

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.train.input_shape

    @property
    def kind(self) -> str:
        return self.train.kind

    @property
    def meta(self) -> Any:
        return self.train.meta


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
