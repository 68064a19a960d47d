"""The training loop DP-SGD and gradient shaping share, driven by Opacus.

Per-sample gradients are clipped to norm C and Gaussian noise of standard deviation
sigma * C is added to their sum before each step (Abadi et al., 2016). Opacus computes the
per-sample gradients (or only their norms, with ghost clipping: Li et al., 2022), samples
batches (Poisson, for accounting) and keeps physical batches small (BatchMemoryManager).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from typing import Any, Callable

import torch
from torch import nn

from poisonguard.data import ImageData
from poisonguard.errors import UserError
from poisonguard.privacy.compat import make_dp_compatible
from poisonguard.utils import progress, resolve_device, seeded

log = logging.getLogger(__name__)

# "ghost" computes per-sample gradient norms without materialising per-sample gradients
# for linear layers (Li et al., 2022; Bu et al., 2023): on the MNIST CNN it is the fastest
# mode that clips exactly (benchmarks/privacy_throughput.py, notes/issue-6.md).
GRAD_SAMPLE_MODES = ("ghost", "hooks", "functorch", "ew")
OPTIMIZERS = ("sgd", "adam")
DEFAULT_GRAD_SAMPLE_MODE = "ghost"


def check_common(*, max_grad_norm: float, epochs: int, batch_size: int, lr: float | None, optimizer: str,
                 grad_sample_mode: str, max_physical_batch_size: int) -> None:
    """Constructor checks both trainers share (a clear ValueError)."""
    if not (max_grad_norm > 0 and math.isfinite(max_grad_norm)):
        raise ValueError(f"max_grad_norm (clipping bound C) must be positive, got {max_grad_norm:g}")
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    if max_physical_batch_size < 1:
        raise ValueError(f"max physical batch size must be at least 1, got {max_physical_batch_size}")
    if lr is not None and not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"learning rate must be positive, got {lr:g}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; known: {', '.join(OPTIMIZERS)}")
    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise ValueError(f"unknown grad-sample mode {grad_sample_mode!r}; known: {', '.join(GRAD_SAMPLE_MODES)}")


def _optimizer(model: nn.Module, name: str, lr: float | None) -> torch.optim.Optimizer:
    # Weight decay is left out: it is not part of the clipped, noised gradient and would
    # only blur what the clipping bound means.
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr or 0.5, momentum=0.9)
    return torch.optim.Adam(model.parameters(), lr=lr or 2e-3)


def train_private(
    model: nn.Module,
    data: ImageData,
    *,
    max_grad_norm: float,
    epochs: int,
    batch_size: int,
    lr: float | None,
    optimizer: str,
    grad_sample_mode: str,
    max_physical_batch_size: int,
    seed: int,
    device: str,
    noise_multiplier: float | None = None,
    target_epsilon: float | None = None,
    delta: float | None = None,
    accountant: str = "prv",
    poisson: bool = True,
    on_private: Callable[[nn.Module, Any], None] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train a fixed copy of `model` on `data` (x: (N, C, H, W) in [0, 1], y: (N,)) with DP-SGD.

    Give `target_epsilon` (and `delta`) to let Opacus choose the noise for that budget
    (`make_private_with_epsilon`), or `noise_multiplier` to fix it (`make_private`).

    Returns:
        (trained plain module in eval mode, facts about the run: noise_multiplier,
        sample_rate, steps, epsilon (None without accounting), fixes, seconds, ...).
    """
    n = len(data)
    if n == 0:
        raise UserError("cannot train on an empty data set")
    if batch_size > n:
        raise UserError(f"batch size {batch_size} is larger than the {n} training samples")
    dev = resolve_device(device)
    with seeded(seed):
        return _fit_seeded(model, data, dev, seed=seed, batch_size=batch_size, optimizer=optimizer, lr=lr,
                           accountant=accountant, max_grad_norm=max_grad_norm, poisson=poisson,
                           grad_sample_mode=grad_sample_mode, epochs=epochs, target_epsilon=target_epsilon, delta=delta,
                           noise_multiplier=noise_multiplier, max_physical_batch_size=max_physical_batch_size,
                           on_private=on_private)


def _fit_seeded(model, data, dev, *, seed, batch_size, optimizer, lr, accountant, max_grad_norm, poisson,
                grad_sample_mode, epochs, target_epsilon, delta, noise_multiplier, max_physical_batch_size, on_private):
    from torch.utils.data import DataLoader, TensorDataset

    n = len(data)
    fixed, fixes = make_dp_compatible(model)
    fixed.to(dev)
    loader = DataLoader(TensorDataset(data.x.to(dev), data.y.to(dev)), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator(device="cpu").manual_seed(seed))
    opt = _optimizer(fixed, optimizer, lr)
    noise_gen = torch.Generator(device=dev).manual_seed(seed + 1)
    with warnings.catch_warnings():
        # Opacus warns on every run about secure RNG (off: we want seeded runs), RDP orders
        # and hooks firing without input gradients (expected for the first layer).
        warnings.filterwarnings("ignore", category=UserWarning, module=r"opacus(\.|$)")
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        return _train(fixed, fixes, loader, opt, data_size=n, accountant=accountant, max_grad_norm=max_grad_norm,
                      poisson=poisson, noise_gen=noise_gen, grad_sample_mode=grad_sample_mode, epochs=epochs,
                      target_epsilon=target_epsilon, delta=delta, noise_multiplier=noise_multiplier,
                      batch_size=batch_size, optimizer=optimizer, max_physical_batch_size=max_physical_batch_size,
                      on_private=on_private)


def _train(fixed, fixes, loader, opt, *, data_size, accountant, max_grad_norm, poisson, noise_gen, grad_sample_mode,
           epochs, target_epsilon, delta, noise_multiplier, batch_size, optimizer, max_physical_batch_size, on_private):
    from opacus import PrivacyEngine
    from opacus.utils.batch_memory_manager import BatchMemoryManager

    n = data_size
    engine = PrivacyEngine(accountant=accountant)
    common = dict(module=fixed, optimizer=opt, data_loader=loader, criterion=nn.CrossEntropyLoss(),
                  max_grad_norm=max_grad_norm, poisson_sampling=poisson, noise_generator=noise_gen,
                  grad_sample_mode=grad_sample_mode)
    try:
        if target_epsilon is not None:
            made = engine.make_private_with_epsilon(target_epsilon=target_epsilon, target_delta=delta,
                                                    epochs=epochs, **common)
        else:
            made = engine.make_private(noise_multiplier=noise_multiplier, **common)
    except ValueError as exc:  # "The privacy budget is too low." and friends
        raise UserError(f"Opacus cannot set up DP training: {exc}") from exc
    if len(made) == 4:
        private, dp_opt, criterion, private_loader = made
    else:
        (private, dp_opt, private_loader), criterion = made, nn.CrossEntropyLoss()
    if on_private is not None:
        on_private(private, dp_opt)
    sample_rate = 1 / len(private_loader)
    log.info("DP: noise multiplier %.3f, clip %.3g, sample rate %.4f, mode %s",
             dp_opt.noise_multiplier, max_grad_norm, sample_rate, grad_sample_mode)
    private.train()
    seen, start = 0, time.perf_counter()
    for epoch in progress(range(epochs), total=epochs, desc="dp-train"):
        running = 0.0
        with BatchMemoryManager(data_loader=private_loader, max_physical_batch_size=max_physical_batch_size,
                                optimizer=dp_opt) as physical:
            for xb, yb in physical:
                dp_opt.zero_grad(set_to_none=True)
                loss = criterion(private(xb), yb)
                loss.backward()
                dp_opt.step()
                running += float(loss.item()) * len(yb)
                seen += len(yb)
        log.info("DP epoch %d/%d loss %.4f", epoch + 1, epochs, running / n)
    seconds = time.perf_counter() - start
    steps = sum(h[2] for h in engine.accountant.history)
    info: dict[str, Any] = {
        "noise_multiplier": float(dp_opt.noise_multiplier),
        "sample_rate": sample_rate,
        "steps": int(steps),
        "epochs": epochs,
        "batch_size": batch_size,
        "optimizer": optimizer,
        "grad_sample_mode": grad_sample_mode,
        "poisson_sampling": poisson,
        "fixes": fixes,
        "seconds": round(seconds, 3),
        "samples_per_second": round(seen / max(seconds, 1e-9), 1),
        "epsilon": float(engine.get_epsilon(delta)) if poisson and delta is not None else None,
    }
    trained = private.to_standard_module() if hasattr(private, "to_standard_module") else private._module
    return trained.eval(), info
