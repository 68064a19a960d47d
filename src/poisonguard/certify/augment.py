"""Gaussian noise augmentation, the training randomized smoothing needs (Cohen, Rosenfeld &
Kolter, 2019, Section 5: train the base classifier on x + N(0, sigma^2 I))."""

from __future__ import annotations

import torch
from torch import nn

from poisonguard.certify.smoothing import check_sigma
from poisonguard.data import ImageData
from poisonguard.train import FitConfig, fit


class GaussianNoise(nn.Module):
    """Adds N(0, sigma^2) noise to (N, C, H, W) inputs in training mode; the identity in eval mode.

    The noise goes on the [0, 1] input without clamping, exactly as at certification time.
    It draws from torch's global generator, which `fit` seeds, so training stays reproducible.
    """

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = check_sigma(sigma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        return x + torch.randn_like(x) * self.sigma


def fit_gaussian_augment(model: nn.Module, data: ImageData, config: FitConfig, *, sigma: float) -> nn.Module:
    """Train `model` in place with Gaussian noise augmentation and return it (eval mode).

    The noise layer wraps the model only while training, so the returned model (and the
    file saved from it) is the plain architecture.
    """
    fit(nn.Sequential(GaussianNoise(sigma), model), data, config)
    return model.eval()
