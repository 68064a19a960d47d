"""DP-SGD with privacy accounting (Abadi et al., 2016), through Opacus (Yousefpour et al., 2021).

If one training sample can change the trained model only a little (epsilon, delta), a few
poisoned samples cannot plant much either: the backdoor's effect is bounded by group
privacy, roughly e^(k * epsilon) for k poisoned samples (Ma, Zhu & Hsu, 2019).
"""

from __future__ import annotations

import math

from torch import nn

from poisonguard.data import ImageData
from poisonguard.privacy.accounting import check_accountant, check_delta, check_epsilon
from poisonguard.privacy.engine import DEFAULT_GRAD_SAMPLE_MODE, check_common, train_private
from poisonguard.privacy.input_stats import STATS_DELTA_SHARE, STATS_EPSILON_SHARE, with_private_input_stats
from poisonguard.privacy.registry import TRAINERS
from poisonguard.results import Privacy


@TRAINERS.register("dp_sgd")
class DPSGD:
    """Train a copy of a model with (epsilon, delta)-DP-SGD.

    Args:
        epsilon: privacy budget to reach after `epochs`; Opacus picks the noise multiplier.
        delta: failure probability of the guarantee; must be below 1/N (checked in `fit`).
        max_grad_norm: per-sample clipping bound C.
        epochs, batch_size (expected, Poisson-sampled), lr, optimizer ("sgd" or "adam").
        accountant: "prv" (tighter, default) or "rdp".
        grad_sample_mode: Opacus per-sample gradient engine: "ghost", "hooks", "functorch", "ew".
        max_physical_batch_size: memory cap per forward/backward (BatchMemoryManager).
        seed, device.
    """

    def __init__(self, *, epsilon: float, delta: float = 1e-5, max_grad_norm: float = 1.0, epochs: int = 10,
                 batch_size: int = 256, lr: float | None = None, optimizer: str = "sgd", accountant: str = "prv",
                 grad_sample_mode: str = DEFAULT_GRAD_SAMPLE_MODE, max_physical_batch_size: int = 256,
                 seed: int = 0, device: str = "auto") -> None:
        self.epsilon = check_epsilon(epsilon)
        self.delta = check_delta(delta)
        self.accountant = check_accountant(accountant)
        check_common(max_grad_norm=max_grad_norm, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                     grad_sample_mode=grad_sample_mode, max_physical_batch_size=max_physical_batch_size)
        self.max_grad_norm, self.epochs, self.batch_size, self.lr = float(max_grad_norm), int(epochs), int(batch_size), lr
        self.optimizer, self.grad_sample_mode = optimizer, grad_sample_mode
        self.max_physical_batch_size, self.seed, self.device = int(max_physical_batch_size), int(seed), device

    def fit(self, model: nn.Module, data: ImageData, **hooks) -> tuple[nn.Module, Privacy]:
        """Return (trained copy of `model`, privacy spent); `model` itself is left unchanged.

        A model that scales its own raw inputs (the tables' `mlp`) first gets private input
        statistics for a tenth of epsilon and delta (privacy.input_stats); DP-SGD gets the rest,
        and the two add up (basic composition) to the stated budget.
        """
        check_delta(self.delta, len(data))
        model, stats = with_private_input_stats(model, data.x, epsilon=min(STATS_EPSILON_SHARE * self.epsilon, 0.9),
                                                delta=STATS_DELTA_SHARE * self.delta, seed=self.seed)
        sgd_epsilon = self.epsilon - (stats["epsilon"] if stats else 0.0)
        sgd_delta = self.delta - (stats["delta"] if stats else 0.0)
        trained, info = train_private(
            model, data, target_epsilon=sgd_epsilon, delta=sgd_delta, accountant=self.accountant, poisson=True,
            max_grad_norm=self.max_grad_norm, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
            optimizer=self.optimizer, grad_sample_mode=self.grad_sample_mode,
            max_physical_batch_size=self.max_physical_batch_size, seed=self.seed, device=self.device, **hooks)
        epsilon = info.pop("epsilon")
        noise = info.pop("noise_multiplier")
        if stats is not None and epsilon is not None:
            info.update(dp_sgd_epsilon=epsilon, dp_sgd_delta=sgd_delta, input_statistics=stats)
            epsilon += stats["epsilon"]
        privacy = Privacy(epsilon=epsilon if epsilon is not None else math.inf, delta=self.delta,
                          accountant=self.accountant, noise_multiplier=noise, max_grad_norm=self.max_grad_norm,
                          extra={"method": "dp_sgd", "target_epsilon": self.epsilon, **info})
        return trained, privacy
