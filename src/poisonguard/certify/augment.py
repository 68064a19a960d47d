"""Gaussian noise augmentation, the training randomized smoothing needs (Cohen, Rosenfeld &
Kolter, 2019, Section 5: train the base classifier on x + N(0, sigma^2 I))."""

from __future__ import annotations

import torch
from torch import nn

from poisonguard.certify.smoothing import check_sigma, feature_std
from poisonguard.data import ImageData
from poisonguard.train import FitConfig, fit


class GaussianNoise(nn.Module):
    """Adds N(0, sigma^2) noise to inputs in training mode; the identity in eval mode.

    The noise goes on the [0, 1] image without clamping, exactly as at certification time. On a
    table's raw features it is scaled by each feature's training std (`scale`), since `certify`
    smooths tables in standardised units: the same sigma means the same thing at both ends.
    It draws from torch's global generator, which `fit` seeds, so training stays reproducible.
    """

    def __init__(self, sigma: float, scale: torch.Tensor | None = None) -> None:
        super().__init__()
        self.sigma = check_sigma(sigma)
        self.register_buffer("scale", scale if scale is not None else torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        return x + torch.randn_like(x) * self.sigma * self.scale


def fit_gaussian_augment(model: nn.Module, data: ImageData, config: FitConfig, *, sigma: float) -> nn.Module:
    """Train `model` in place with Gaussian noise augmentation and return it (eval mode).

    The noise layer wraps the model only while training, so the returned model (and the
    file saved from it) is the plain architecture.
    """
    scale = feature_std(data.x) if data.kind == "tabular" else None  # the units `certify` smooths a table in
    fit(nn.Sequential(GaussianNoise(sigma, scale), model), data, config)
    return model.eval()
