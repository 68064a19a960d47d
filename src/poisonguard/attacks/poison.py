"""Poisoning a training set: stamp a trigger on a fraction of it and relabel, or flip labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from poisonguard.attacks.triggers import Trigger, WarpTrigger, attack_eligible, target_labels
from poisonguard.attacks.wanet import noise_warp
from poisonguard.data import ImageData
from poisonguard.errors import UserError


@dataclass(frozen=True)
class Poisoned:
    """The poisoned training set and which indices were changed."""

    data: ImageData
    poisoned_index: torch.Tensor
    noise_index: torch.Tensor  # WaNet noise-mode samples (label kept); empty otherwise


def _check_rate(rate: float) -> None:
    if not 0 <= rate <= 1:
        raise UserError(f"poisoning rate must lie in [0, 1], got {rate}")


def poison_dataset(
    data: ImageData, trigger: Trigger, *, rate: float, seed: int = 0, cross_ratio: float = 2.0
) -> Poisoned:
    """Stamp `trigger` on `rate` x N training images and give them the attack's target labels.

    Poisoned images are drawn from those whose label differs from the target, so the rate
    counts images whose label really changes. For WaNet, `cross_ratio` x that many other
    images get the noisy warp with their own labels (the paper's noise mode).
    """
    _check_rate(rate)
    if len(data) == 0:
        raise UserError("cannot poison an empty data set")
    rng = np.random.default_rng(seed)
    eligible = np.flatnonzero(attack_eligible(trigger, data.y).numpy())
    n_poison = int(round(rate * len(data)))
    if n_poison > len(eligible):
        raise UserError(f"rate {rate} asks for {n_poison} poisoned images but only {len(eligible)} are not of the target class")
    poison_idx = np.sort(rng.choice(eligible, size=n_poison, replace=False))
    x, y = data.x.clone(), data.y.clone()
    if n_poison:
        x[poison_idx] = trigger.apply(x[poison_idx])
        y[poison_idx] = target_labels(trigger, y[poison_idx], data.num_classes)
    noise_idx = np.empty(0, dtype=np.int64)
    if isinstance(trigger, WarpTrigger) and n_poison and cross_ratio > 0:
        rest = np.setdiff1d(np.arange(len(data)), poison_idx)
        n_noise = min(len(rest), int(round(cross_ratio * n_poison)))
        noise_idx = np.sort(rng.choice(rest, size=n_noise, replace=False))
        gen = torch.Generator().manual_seed(seed + 1)
        x[noise_idx] = noise_warp(trigger, x[noise_idx], gen)
    return Poisoned(data.with_(x=x, y=y), torch.from_numpy(poison_idx), torch.from_numpy(noise_idx))


def flip_labels(
    data: ImageData, *, rate: float, target: int | None = None, source: int | None = None, seed: int = 0
) -> Poisoned:
    """Label flipping: relabel `rate` x N images (of class `source`, if given).

    With `target`, flipped images go to that class; otherwise each gets a random other class.
    """
    _check_rate(rate)
    k = data.num_classes
    for name, c in (("target", target), ("source", source)):
        if c is not None and not 0 <= c < k:
            raise UserError(f"{name} class {c} is not in [0, {k - 1}]")
    rng = np.random.default_rng(seed)
    y = data.y.clone()
    candidates = np.arange(len(data)) if source is None else np.flatnonzero(y.numpy() == source)
    if target is not None:
        candidates = candidates[y.numpy()[candidates] != target]
    n_flip = int(round(rate * len(data)))
    if n_flip > len(candidates):
        raise UserError(f"rate {rate} asks for {n_flip} flipped labels but only {len(candidates)} images qualify")
    idx = np.sort(rng.choice(candidates, size=n_flip, replace=False))
    if target is not None:
        y[idx] = target
    else:
        shift = torch.from_numpy(rng.integers(1, k, size=n_flip))
        y[idx] = (y[idx] + shift) % k
    return Poisoned(data.with_(y=y), torch.from_numpy(idx), torch.empty(0, dtype=torch.long))
