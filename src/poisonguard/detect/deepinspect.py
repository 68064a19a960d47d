"""DeepInspect (Chen et al., 2019, "DeepInspect: A Black-box Trojan Detection and Mitigation
Framework for Deep Neural Networks", IJCAI), data-free.

1. Model inversion synthesises inputs of every class from the model alone.
2. A conditional generator G(z, t) learns, for every candidate target t at once, an additive
   perturbation that sends the synthesised inputs to t, while a penalty keeps its L1
   magnitude small (the model is the fixed discriminator).
3. A backdoor's target needs a much smaller perturbation than the other classes: the
   per-class magnitudes go through the double-MAD outlier test on the small side
   (index > 2, i.e. about the 5% significance level of the paper's hypothesis test).
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from poisonguard.data import ImageData
from poisonguard.detect import DETECTORS
from poisonguard.detect.anomaly import THRESHOLD, dmad_anomaly_index, flag_small
from poisonguard.detect.base import check_finite, check_inputs, check_number, device_for, make_detection
from poisonguard.detect.engine import frozen_copy
from poisonguard.detect.model_inversion import invert_classes
from poisonguard.errors import UserError
from poisonguard.results import Detection
from poisonguard.utils import progress


class ConditionalGenerator(nn.Module):
    """G(z, t): noise (N, z) and target class (N,) -> perturbation (N, C, H, W) in [-1, 1]."""

    def __init__(self, noise_dim: int, num_classes: int, input_shape: tuple[int, int, int], hidden: int = 256) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.input_shape = input_shape
        self.net = nn.Sequential(
            nn.Linear(noise_dim + num_classes, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, math.prod(input_shape)),
        )
        # Start from no perturbation at all: each target's perturbation then grows only where
        # the model needs it, so its final size reflects the target rather than the initialisation.
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = torch.cat([z, F.one_hot(t, self.num_classes).to(z.dtype)], dim=1)
        return torch.tanh(self.net(h)).view(-1, *self.input_shape)


def perturbation_to_trigger(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean perturbation (C, H, W) -> trigger-file mask (H, W) and pattern (C, H, W).

    x + d is approximated by (1 - m) x + m p with m = |d| (largest over channels) and p = 1
    where d pushes up, 0 where it pushes down.
    """
    mask = delta.abs().amax(0).clamp(0, 1)
    pattern = (delta > 0).float()
    return mask, pattern


@DETECTORS.register("deepinspect")
class DeepInspect:
    """Data-free DeepInspect. Keyword-only hyperparameters:

    per_class: synthesised images per class; inversion_steps; steps (generator training);
    batch_size (images per target per step); noise_dim; lr; gamma (weight of the L1
    perturbation penalty per pixel); samples (z draws to measure magnitudes);
    threshold (2.0); seed; device.
    """

    name = "deepinspect"
    needs_data = False

    def __init__(self, *, per_class: int = 10, inversion_steps: int = 150, steps: int = 300, batch_size: int = 16,
                 noise_dim: int = 32, lr: float = 1e-3, gamma: float = 0.05, samples: int = 32,
                 threshold: float = THRESHOLD, seed: int = 0, device: str = "auto") -> None:
        for name, value in (("per_class", per_class), ("inversion_steps", inversion_steps), ("steps", steps),
                            ("batch_size", batch_size), ("noise_dim", noise_dim), ("samples", samples)):
            check_number(name, value, low=1, integer=True)
        check_number("lr", lr, low=0)
        check_number("gamma", gamma, low=0)
        check_number("threshold", threshold, low=0)
        check_number("seed", seed, integer=True)
        if lr <= 0:
            raise ValueError("lr must be positive")
        self.per_class, self.inversion_steps, self.steps = int(per_class), int(inversion_steps), int(steps)
        self.batch_size, self.noise_dim, self.lr, self.gamma = int(batch_size), int(noise_dim), float(lr), float(gamma)
        self.samples, self.threshold, self.seed, self.device = int(samples), float(threshold), int(seed), device

    def detect(self, model: nn.Module, data: ImageData | None = None, *, input_shape=None,
               num_classes: int | None = None) -> Detection:
        """Scan `model` without training data. `data` (if given) only fixes the input shape."""
        start = time.perf_counter()
        shape, k = check_inputs(model, data, needs_data=False, name=self.name, input_shape=input_shape,
                                num_classes=num_classes)
        if len(shape) != 3:  # its generator and smoothness prior are for images
            raise UserError(f"{self.name} reconstructs images (C, H, W); this model takes inputs {tuple(shape)}: "
                            "scan it with its data (--data FILE, and --label-column for a table)")
        device = device_for(self.device)
        frozen = frozen_copy(model, device, shape)
        torch.manual_seed(self.seed)
        x_syn, y_syn = invert_classes(frozen, num_classes=k, input_shape=shape, per_class=self.per_class,
                                      steps=self.inversion_steps, seed=self.seed, device=device)
        check_finite(self.name, x_syn)
        gen = torch.Generator(device="cpu").manual_seed(self.seed + 1)
        g = ConditionalGenerator(self.noise_dim, k, shape).to(device)
        opt = torch.optim.Adam(g.parameters(), lr=self.lr)
        targets = torch.arange(k, device=device).repeat_interleave(self.batch_size)
        for _ in progress(range(self.steps), total=self.steps, desc="deepinspect"):
            idx = torch.randint(len(x_syn), (len(targets),), generator=gen).to(device)
            z = torch.randn(len(targets), self.noise_dim, generator=gen).to(device)
            delta = g(z, targets)
            logits = frozen((x_syn[idx] + delta).clamp(0, 1))
            ce = F.cross_entropy(logits, targets)
            # L1 over pixels (largest change over channels), so gamma means the same for grey and colour.
            pert = delta.abs().amax(1).flatten(1).sum(1).mean()
            loss = ce + self.gamma * pert
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        check_finite(self.name, *[p.detach() for p in g.parameters()])
        return self._verdict(frozen, g, x_syn, k, device, gen, start)

    @torch.no_grad()
    def _verdict(self, model, g, x_syn, k, device, gen, start) -> Detection:
        sizes, success, masks, patterns = [], [], [], []
        for t in range(k):
            z = torch.randn(self.samples, self.noise_dim, generator=gen).to(device)
            tt = torch.full((self.samples,), t, device=device, dtype=torch.long)
            delta = g(z, tt)
            sizes.append(float(delta.abs().amax(1).flatten(1).sum(1).mean()))
            others = x_syn[(torch.arange(len(x_syn), device=device) // self.per_class) != t]
            pick = others[torch.randint(len(others), (self.samples,), generator=gen).to(device)]
            success.append(float((model((pick + delta).clamp(0, 1)).argmax(1) == t).float().mean()))
            m, p = perturbation_to_trigger(delta.mean(0))
            masks.append(m.cpu())
            patterns.append(p.cpu())
        sizes_t = torch.tensor(sizes, dtype=torch.float64)
        index = dmad_anomaly_index(sizes_t)
        flagged = flag_small(sizes_t, index, self.threshold)
        return make_detection(
            self.name, index=index, flagged=flagged, start=start, sizes=sizes_t, masks=torch.stack(masks),
            patterns=torch.stack(patterns), threshold=self.threshold,
            extra={"statistic": "generated perturbation L1", "attack_success": success, "data_free": True,
                   "synthesised_per_class": self.per_class},
        )
