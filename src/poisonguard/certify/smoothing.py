"""Randomized smoothing (Cohen, Rosenfeld & Kolter, 2019): PREDICT and CERTIFY, batched.

The smoothed classifier g(x) = argmax_c P(f(x + eps) = c), eps ~ N(0, sigma^2 I), is
certified to keep its answer within an L2 ball of radius sigma * Phi^-1(pA_lower) around x.
Noise is added to the [0, 1] input (models normalise inside, DESIGN.md), so radii are in
pixel units of [0, 1] images. Tables are smoothed in standardised feature space
(`standardised_view`: each feature divided by its training standard deviation, since raw
units differ by orders of magnitude), so their radii are in those units.

Speed: instead of a Python loop over examples with one batch of 400 draws at a time, the
noisy copies of several examples (and of both CERTIFY phases) are written straight into one
preallocated buffer and classified together; counts are scattered back with one index_add.
The noise itself is defined per (example, phase) (see `noise.py`), so the batching never
changes a result.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from typing import Sequence

import numpy as np
import torch
from torch import nn

from poisonguard.certify import bounds
from poisonguard.certify.noise import PHASE_ESTIMATE, PHASE_PREDICT, PHASE_SELECT, block_sizes, stream_generator
from poisonguard.certify.registry import CERTIFIERS
from poisonguard.data import ImageData
from poisonguard.errors import UserError
from poisonguard.results import Certification
from poisonguard.utils import model_device, progress, resolve_device

log = logging.getLogger(__name__)

DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


def check_sigma(sigma: float) -> float:
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a positive number, got {sigma}")
    return float(sigma)


def check_alpha(alpha: float) -> float:
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha}")
    return float(alpha)


def check_n(n: int, alpha: float, *, what: str = "n") -> int:
    """n must be an integer large enough that an all-correct count could certify."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{what} must be a positive integer, got {n}")
    need = bounds.min_samples_to_certify(alpha)
    if n < need:
        raise ValueError(f"{what}={n} is too small to ever certify at alpha={alpha}: even {n} of {n} draws on one "
                        f"class give a lower bound <= 1/2; use {what} >= {need}")
    return int(n)


def check_n0(n0: int, n: int) -> int:
    if isinstance(n0, bool) or not isinstance(n0, (int, np.integer)) or n0 < 1:
        raise ValueError(f"n0 must be a positive integer, got {n0}")
    if n0 > n:
        raise ValueError(f"n0 ({n0}) must not exceed n ({n}): n0 draws only guess the class, n draws certify it")
    return int(n0)


class SmoothedClassifier:
    """A Gaussian-smoothed classifier around `model` (Cohen, Rosenfeld & Kolter, 2019).

    Args:
        model: any classifier taking (N, C, H, W) inputs in [0, 1]; never modified.
        sigma: noise standard deviation (in [0, 1] pixel units).
        seed: seeds the noise; the same seed gives the same answers on the same machine.
        num_classes: number of outputs (read from one forward pass when None).
        batch_size: noisy samples classified per forward pass.
        device: "auto", "cpu" or "cuda"; the model is copied there if it lives elsewhere.
        autocast: classify in bfloat16 on CUDA (faster; counts may differ from fp32 in rare ties).

    Successive calls continue the example numbering (`start_index`), so certifying a data
    set in pieces gives the same result as certifying it at once.
    """

    def __init__(self, model: nn.Module, *, sigma: float, seed: int = 0, num_classes: int | None = None,
                 batch_size: int = 4000, device: str | torch.device = "auto", autocast: bool = False) -> None:
        self.sigma = check_sigma(sigma)
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.device = resolve_device(device)
        self.autocast = bool(autocast) and self.device.type == "cuda"
        self.model = model if model_device(model) == self.device else copy.deepcopy(model).to(self.device)
        self.num_classes = num_classes
        self.next_index = 0

    # ------------------------------------------------------------------ sampling

    @contextlib.contextmanager
    def _eval_mode(self):
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            self.model.train(was_training)

    def _classify(self, batch: torch.Tensor) -> torch.Tensor:
        if self.autocast:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return self.model(batch).argmax(1)
        return self.model(batch).argmax(1)

    def _num_classes(self, x: torch.Tensor) -> int:
        if self.num_classes is None:
            self.num_classes = int(self.model(x[:1]).shape[1])
        return self.num_classes

    def sample_counts(self, x: torch.Tensor, plan: Sequence[tuple[int, int]], *, indices: Sequence[int]) -> torch.Tensor:
        """Class counts of the base model under noise, for every example and phase at once.

        Args:
            x: (N, C, H, W) inputs on any device.
            plan: (phase, draws) pairs, e.g. [(PHASE_SELECT, n0), (PHASE_ESTIMATE, n)].
            indices: (N,) each example's number in the noise numbering (see noise.py).

        Returns:
            (N, len(plan), num_classes) int64 counts on the CPU.
        """
        x = x.to(self.device, torch.float32)
        n_ex, shape = len(x), tuple(x.shape[1:])
        if len(indices) != n_ex:
            raise ValueError(f"{len(indices)} noise indices for {n_ex} examples")
        with self._eval_mode():
            k = self._num_classes(x)
            counts = torch.zeros(n_ex * len(plan) * k, dtype=torch.int64, device=self.device)
            biggest = max(b for _, num in plan for b in block_sizes(num))
            buffer = torch.empty((self.batch_size + biggest, *shape), device=self.device)
            owners: list[tuple[int, int]] = []  # (row of counts, draws) for each filled block
            filled = 0

            def flush() -> None:
                nonlocal filled
                if filled == 0:
                    return
                pred = self._classify(buffer[:filled])
                rows = torch.repeat_interleave(torch.tensor([r for r, _ in owners], device=self.device),
                                               torch.tensor([b for _, b in owners], device=self.device))
                counts.index_add_(0, rows * k + pred, torch.ones_like(pred))
                owners.clear()
                filled = 0

            for i in range(n_ex):
                for p, (phase, num) in enumerate(plan):
                    gen = stream_generator(seed=self.seed, index=int(indices[i]), phase=phase, device=self.device)
                    for b in block_sizes(num):
                        view = buffer[filled:filled + b]
                        torch.randn(view.shape, generator=gen, device=self.device, out=view)
                        view.mul_(self.sigma).add_(x[i])
                        owners.append((i * len(plan) + p, b))
                        filled += b
                        if filled >= self.batch_size:
                            flush()
            flush()
        return counts.view(n_ex, len(plan), k).cpu()

    def _indices(self, n_ex: int, start_index: int | None) -> range:
        start = self.next_index if start_index is None else int(start_index)
        self.next_index = start + n_ex
        return range(start, start + n_ex)

    @staticmethod
    def _as_batch(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
        if x.ndim in (1, 3):  # one feature vector or one image
            return x.unsqueeze(0), True
        if x.ndim not in (2, 4):
            raise UserError(f"inputs must have shape (N, C, H, W), (C, H, W), (N, F) or (F,), got {tuple(x.shape)}")
        return x, False

    # ------------------------------------------------------------------ the two algorithms

    def predict(self, x: torch.Tensor, n: int, alpha: float, *, start_index: int | None = None):
        """PREDICT: the smoothed class, or -1 (abstain) unless a binomial test rejects at alpha.

        Args:
            x: (N, C, H, W) or one (C, H, W) image in [0, 1].
            n: noise draws per example.
            alpha: probability of returning a class other than g(x) is at most alpha.

        Returns:
            (N,) int64 tensor of classes (-1 = abstain); an int for a single image.
        """
        alpha = check_alpha(alpha)
        if isinstance(n, bool) or n < 1:
            raise UserError(f"n must be a positive integer, got {n}")
        batch, single = self._as_batch(x)
        indices = self._indices(len(batch), start_index)
        counts = self.sample_counts(batch, [(PHASE_PREDICT, int(n))], indices=indices)[:, 0]
        out = torch.from_numpy(bounds.predict_from_counts(counts.numpy(), alpha))
        return int(out[0]) if single else out

    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float, *, start_index: int | None = None):
        """CERTIFY: guess the class from n0 draws, bound its probability from n fresh draws.

        Args:
            x: (N, C, H, W) or one (C, H, W) image in [0, 1].
            n0: selection draws; n: estimation draws; alpha: failure probability.

        Returns:
            (predictions (N,) int64 with -1 = abstain, radii (N,) float64 with 0 = abstain);
            (int, float) for a single image.
        """
        alpha = check_alpha(alpha)
        n = check_n(n, alpha)
        n0 = check_n0(n0, n)
        batch, single = self._as_batch(x)
        indices = self._indices(len(batch), start_index)
        counts = self.sample_counts(batch, [(PHASE_SELECT, n0), (PHASE_ESTIMATE, n)], indices=indices).numpy()
        pred, radii = decide_certify(counts, n, self.sigma, alpha)
        pred_t, radii_t = torch.from_numpy(pred), torch.from_numpy(radii)
        return (int(pred_t[0]), float(radii_t[0])) if single else (pred_t, radii_t)


class _FromStandardised(nn.Module):
    """model(z * std + mean): the suspect seen from standardised feature space."""

    def __init__(self, model: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(z * self.std + self.mean)


STANDARDISED = "standardised features: sigma and radii in units of each feature's training std"


def standardised_view(model: nn.Module, data: ImageData, train: ImageData) -> tuple[nn.Module, ImageData, torch.Tensor]:
    """(model, data, std) in the standardised space of `train`'s features (tables), for smoothing
    there; `std` (F,) measures any other change (a trigger's) in the same units."""
    mean, std = train.x.mean(0), feature_std(train.x)
    return _FromStandardised(model, mean, std).eval(), data.with_(x=(data.x - mean) / std), std


def feature_std(x: torch.Tensor) -> torch.Tensor:
    """Each feature's std over rows x (N, F), 1 for a constant one: the unit of standardised space."""
    std = x.std(0)
    return torch.where(std > 1e-8, std, torch.ones_like(std))


def smoothing_space(model: nn.Module, splits) -> tuple[nn.Module, ImageData, torch.Tensor | None]:
    """(model, test data, per-feature scale or None) as smoothing certifies them, for `certify` and
    the checklist's stage alike: images as they are, a table in standardised units."""
    if splits.kind != "tabular":
        return model, splits.test, None
    return standardised_view(model, splits.test, splits.train)


def evenly_spaced(total: int, count: int | None) -> np.ndarray:
    """`count` indices spread over range(total) (Cohen et al. certify every k-th test image)."""
    if count is None or count >= total:
        return np.arange(total)
    return np.unique(np.linspace(0, total - 1, count).round().astype(np.int64))


@CERTIFIERS.register("randomized_smoothing")
class RandomizedSmoothing:
    """Certify a model's test predictions with Gaussian smoothing (Cohen, Rosenfeld & Kolter, 2019).

    Args:
        sigma: noise level; n0: selection draws; n: estimation draws; alpha: failure probability.
        max_examples: certify this many evenly spaced test examples (None: all).
        radii: radii at which to report certified accuracy.
        batch_size, device, autocast: see SmoothedClassifier.
        seed: seeds the noise.
    """

    def __init__(self, *, sigma: float = 0.25, n0: int = 100, n: int = 100_000, alpha: float = 0.001,
                 max_examples: int | None = None, radii: Sequence[float] = DEFAULT_RADII, batch_size: int = 4000,
                 device: str = "auto", autocast: bool = False, seed: int = 0) -> None:
        self.sigma = check_sigma(sigma)
        self.alpha = check_alpha(alpha)
        self.n = check_n(n, self.alpha)
        self.n0 = check_n0(n0, self.n)
        if max_examples is not None and max_examples < 1:
            raise ValueError(f"max examples must be at least 1, got {max_examples}")
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.max_examples = max_examples
        self.radii = tuple(float(r) for r in radii)
        self.batch_size, self.device, self.autocast, self.seed = int(batch_size), device, autocast, int(seed)

    def certify(self, model: nn.Module, data: ImageData) -> Certification:
        """Certify evenly spaced examples of `data`; the model is not changed."""
        if len(data) == 0:
            raise UserError("no examples to certify")
        index = evenly_spaced(len(data), self.max_examples)
        smoothed = SmoothedClassifier(model, sigma=self.sigma, seed=self.seed, num_classes=data.num_classes,
                                      batch_size=self.batch_size, device=self.device, autocast=self.autocast)
        # Several examples share a forward pass when n is small next to the batch size.
        chunk = max(1, math.ceil(self.batch_size / (self.n + self.n0)))
        plan = [(PHASE_SELECT, self.n0), (PHASE_ESTIMATE, self.n)]
        preds, radii = [], []
        start = time.perf_counter()
        for s in progress(range(0, len(index), chunk), total=math.ceil(len(index) / chunk), desc="certify"):
            ids = index[s:s + chunk]
            # The data-set index numbers the noise, so a subset certifies each image as the full run would.
            counts = smoothed.sample_counts(data.x[torch.as_tensor(ids)], plan, indices=ids.tolist())
            p, r = decide_certify(counts.numpy(), self.n, self.sigma, self.alpha)
            preds.extend(p.tolist())
            radii.extend(r.tolist())
        seconds = time.perf_counter() - start
        return summarize(preds, radii, data.y[torch.as_tensor(index)].numpy(), index=index, sigma=self.sigma,
                         n=self.n, n0=self.n0, alpha=self.alpha, radii_grid=self.radii,
                         seconds_per_example=seconds / len(index), extra={"batch_size": self.batch_size,
                                                                          "seed": self.seed})


def decide_certify(counts: np.ndarray, n: int, sigma: float, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """CERTIFY's decision from (N, 2, C) counts (selection phase, estimation phase)."""
    # argmax keeps the smaller class index among ties, like Cohen et al.'s code.
    guess = counts[:, 0].argmax(1)
    return bounds.certify_from_counts(guess, counts[np.arange(len(counts)), 1, guess], n, sigma, alpha)


def summarize(predictions, radii, labels, *, index, sigma: float, n: int, n0: int, alpha: float,
              radii_grid: Sequence[float], seconds_per_example: float, extra: dict | None = None) -> Certification:
    """Build the report's `certification` block from per-example predictions and radii."""
    predictions = np.asarray(predictions, dtype=np.int64)
    radii = np.asarray(radii, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    correct = predictions == labels
    top = bounds.max_certifiable_radius(n, sigma, alpha)
    grid = np.round(np.linspace(0, max(top, max(radii_grid)), 41), 4)
    curve = bounds.certified_accuracy(radii, correct, grid)
    return Certification(
        sigma=sigma, n=n, n0=n0, alpha=alpha,
        certified_accuracy=bounds.certified_accuracy(radii, correct, radii_grid),
        abstain_rate=float(np.mean(predictions < 0)) if len(predictions) else 0.0,
        seconds_per_example=float(seconds_per_example),
        predictions=tuple(int(p) for p in predictions), radii=tuple(round(float(r), 6) for r in radii),
        extra={"method": "randomized_smoothing", "examples": int(len(predictions)), "indices": [int(i) for i in index],
               "smoothed_accuracy": float(np.mean(correct)) if len(correct) else 0.0,
               "max_certifiable_radius": top, "min_n_to_certify": bounds.min_samples_to_certify(alpha),
               "curve": {"radius": [float(g) for g in grid], "certified_accuracy": list(curve.values())},
               **(extra or {})})
