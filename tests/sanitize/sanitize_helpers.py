"""Planted-poison data sets for the sanitize tests (a 1,500-image MNIST subset)."""

from __future__ import annotations

import numpy as np
from poisonguard.data import per_class_subset


def planted(mnist, *, rate: float, seed: int, attack: str = "badnets"):
    """(poisoned ImageData, bool (N,) truth) on 150 images per class of MNIST 5k's train part."""
    from poisonguard.attacks import badnets_trigger, blended_trigger, poison_dataset

    base = per_class_subset(mnist.train, per_class=150, seed=seed)
    trigger = (badnets_trigger(mnist.input_shape, target=0, size=3) if attack == "badnets"
               else blended_trigger(mnist.input_shape, target=0, ratio=0.2, seed=seed))
    p = poison_dataset(base, trigger, rate=rate, seed=seed)
    truth = np.zeros(len(base), bool)
    truth[p.poisoned_index.numpy()] = True
    return p.data, truth, trigger


def uint8(x) -> np.ndarray:
    return np.clip(np.rint(x.numpy() * 255), 0, 255).astype(np.uint8)
