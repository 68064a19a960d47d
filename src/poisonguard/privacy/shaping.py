"""Gradient shaping (Hong et al., 2020): per-sample clipping and noise, without accounting.

Poisoned samples tend to have gradients that differ in norm and direction from clean ones;
bounding every sample's gradient norm to C and adding a little Gaussian noise limits what
they can steer, at far less cost in accuracy than a formal budget demands. No epsilon is
claimed: batches are ordinary shuffled ones and no accountant runs, so it is cheaper and
gives no privacy guarantee.
"""

from __future__ import annotations

import copy
import math

from torch import nn

from poisonguard.data import ImageData
from poisonguard.privacy.engine import DEFAULT_GRAD_SAMPLE_MODE, check_common, train_private
from poisonguard.train import fit_input_stats, unfitted_scalers
from poisonguard.privacy.registry import TRAINERS
from poisonguard.results import Privacy


@TRAINERS.register("gradient_shaping")
class GradientShaping:
    """Train a copy of a model with clipped, noised per-sample gradients at chosen values.

    Args:
        noise_multiplier: noise standard deviation in units of C (0 = clipping only).
        max_grad_norm: per-sample clipping bound C.
        epochs, batch_size, lr, optimizer, grad_sample_mode, max_physical_batch_size, seed, device:
            as for `DPSGD`.
    """

    def __init__(self, *, noise_multiplier: float = 0.5, max_grad_norm: float = 1.0, epochs: int = 10,
                 batch_size: int = 256, lr: float | None = None, optimizer: str = "sgd",
                 grad_sample_mode: str = DEFAULT_GRAD_SAMPLE_MODE, max_physical_batch_size: int = 256,
                 seed: int = 0, device: str = "auto") -> None:
        if not (noise_multiplier >= 0 and math.isfinite(noise_multiplier)):
            raise ValueError(f"noise multiplier must be >= 0, got {noise_multiplier:g}")
        check_common(max_grad_norm=max_grad_norm, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                     grad_sample_mode=grad_sample_mode, max_physical_batch_size=max_physical_batch_size)
        self.noise_multiplier, self.max_grad_norm = float(noise_multiplier), float(max_grad_norm)
        self.epochs, self.batch_size, self.lr, self.optimizer = int(epochs), int(batch_size), lr, optimizer
        self.grad_sample_mode, self.max_physical_batch_size = grad_sample_mode, int(max_physical_batch_size)
        self.seed, self.device = int(seed), device

    def fit(self, model: nn.Module, data: ImageData, **hooks) -> tuple[nn.Module, Privacy]:
        """Return (trained copy of `model`, a Privacy record with epsilon = inf and accountant "none").

        Shaping claims no privacy, so a model that scales its own inputs (the tables' `mlp`) gets
        its statistics fitted on the rows as in plain training."""
        if unfitted_scalers(model):
            model = copy.deepcopy(model)
            fit_input_stats(model, data.x)
        trained, info = train_private(
            model, data, noise_multiplier=self.noise_multiplier, poisson=False,
            max_grad_norm=self.max_grad_norm, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
            optimizer=self.optimizer, grad_sample_mode=self.grad_sample_mode,
            max_physical_batch_size=self.max_physical_batch_size, seed=self.seed, device=self.device, **hooks)
        info.pop("epsilon")
        noise = info.pop("noise_multiplier")
        return trained, Privacy(epsilon=math.inf, delta=0.0, accountant="none", noise_multiplier=noise,
                                max_grad_norm=self.max_grad_norm,
                                extra={"method": "gradient_shaping", "guarantee": "none (no accounting)", **info})
