"""Fit and evaluate classifiers: clean accuracy and attack success rate."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from poisonguard.attacks.triggers import Trigger
from poisonguard.data import ImageData
from poisonguard.errors import UserError
from poisonguard.metrics import accuracy, attack_success_rate, predict  # noqa: F401  (re-exported)
from poisonguard.results import Evaluation
from poisonguard.utils import batches, progress, resolve_device, seeded

log = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adam")
AUGMENTS = ("auto", "none", "crop", "crop_flip")


@dataclass(frozen=True)
class FitConfig:
    """Training hyperparameters (keyword-only, checked on construction)."""

    epochs: int = 10
    batch_size: int = 128
    lr: float | None = None  # None: 1e-3 for Adam, 0.1 for SGD
    optimizer: str = "adam"
    weight_decay: float = 5e-4
    augment: str = "auto"
    seed: int = 0
    device: str = "auto"
    mixed_precision: bool = True  # bf16 autocast and channels-last, on CUDA only

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"learning rate must be positive, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; known: {', '.join(OPTIMIZERS)}")
        if self.augment not in AUGMENTS:
            raise ValueError(f"unknown augmentation {self.augment!r}; known: {', '.join(AUGMENTS)}")


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, *, pad: int = 4, flip: bool = True) -> torch.Tensor:
    """Standard CIFAR augmentation on a batch: pad-4 random crop and horizontal flip, per sample."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    top = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    left = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    rows = (top[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    out = padded[torch.arange(n, device=x.device)[:, None, None, None], torch.arange(c, device=x.device)[None, :, None, None], rows, cols]
    if flip:
        flips = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        out = torch.where(flips[:, None, None, None], out.flip(3), out)
    return out


def _augmenter(name: str, channels: int):
    if name == "auto":
        # Flipping digits changes their meaning; natural images tolerate it.
        name = "crop_flip" if channels == 3 else "none"
    if name == "none":
        return None
    return lambda x, g: random_crop_flip(x, g, pad=4 if channels == 3 else 2, flip=name == "crop_flip")


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def unfitted_scalers(model: nn.Module) -> list[nn.Module]:
    """The sub-modules that scale the raw inputs (`fit_inputs`, `set_statistics`: the `mlp`'s
    standardisation) and hold no statistics yet."""
    return [m for m in model.modules() if callable(getattr(m, "fit_inputs", None))
            and not bool(getattr(m, "fitted", torch.tensor(True)))]


def fit_input_stats(model: nn.Module, x: torch.Tensor) -> None:
    """Let every unfitted input scaler fit its statistics on the training inputs, once: a
    module that already holds fitted statistics keeps them."""
    for module in unfitted_scalers(model):
        module.fit_inputs(x)


def fit(model: nn.Module, data: ImageData, config: FitConfig | None = None, **overrides) -> nn.Module:
    """Train `model` in place on `data` with cross-entropy and return it (in eval mode).

    SGD uses momentum 0.9 with a one-cycle schedule; Adam uses cosine decay.
    """
    config = config or FitConfig(**overrides)
    if len(data) == 0:
        raise UserError("cannot train on an empty data set")
    device = resolve_device(config.device)
    with seeded(config.seed) as gen:
        return _fit(model, data, config, device, gen)


def _fit(model: nn.Module, data: ImageData, config: FitConfig, device: torch.device, gen: torch.Generator) -> nn.Module:
    fast = config.mixed_precision and device.type == "cuda"
    model.to(device)
    if fast:
        model.to(memory_format=torch.channels_last)
    x_all, y_all = data.x.to(device), data.y.to(device)
    steps_per_epoch = math.ceil(len(data) / config.batch_size)
    total = steps_per_epoch * config.epochs
    if config.optimizer == "sgd":
        lr = config.lr or 0.1
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=config.weight_decay, nesterov=True)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.25)
    else:
        lr = config.lr or 1e-3
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=config.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    fit_input_stats(model, data.x)
    # Crops and flips are for images; tables and token ids train unaugmented.
    augment = _augmenter(config.augment, data.input_shape[0]) if data.kind == "image" else None
    model.train()
    start = time.perf_counter()
    for epoch in progress(range(config.epochs), total=config.epochs, desc="train"):
        order = torch.randperm(len(data), generator=gen).to(device)
        running = 0.0
        for sl in batches(len(data), config.batch_size):
            idx = order[sl]
            xb, yb = x_all[idx], y_all[idx]
            if augment is not None:
                xb = augment(xb, gen)
            if fast:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with _autocast(device, fast):
                loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += float(loss.detach()) * len(idx)
        log.info("epoch %d/%d loss %.4f (%.1fs)", epoch + 1, config.epochs, running / len(data), time.perf_counter() - start)
    return model.eval()


def evaluate(model: nn.Module, test: ImageData, trigger: Trigger | None = None) -> Evaluation:
    """Clean accuracy on `test`, and attack success rate when a trigger is given."""
    acc = accuracy(model, test)
    if trigger is None:
        return Evaluation(clean_accuracy=acc, n_clean=len(test))
    asr, n_attack = attack_success_rate(model, test, trigger)
    return Evaluation(clean_accuracy=acc, attack_success_rate=asr, n_clean=len(test), n_attack=n_attack)
