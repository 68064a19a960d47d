"""A multilayer perceptron for tables: raw feature vectors (N, F) in, its own scaling inside."""

from __future__ import annotations

import torch
from torch import nn

from poisonguard.models.registry import ARCHITECTURES, INPUT_KINDS


class Standardize(nn.Module):
    """(x - mean) / std per feature, the statistics fitted once on the training rows.

    The statistics are buffers (saved with the weights), so the model takes raw feature
    units like every poisonguard model takes raw inputs. `fit.fit` calls `fit_inputs` on the
    training data before the first step; DP-SGD and `fl`, which may not read the rows, call
    `set_statistics` with private (privacy.input_stats) or cross-client (federated.input_stats)
    estimates; until then the layer is the identity.
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("std", torch.ones(features))
        self.register_buffer("fitted", torch.tensor(0.0))  # 1 once fitted (a float: weight files hold real numbers)

    @torch.no_grad()
    def fit_inputs(self, x: torch.Tensor) -> None:
        x = x.float().reshape(len(x), -1)
        std = x.std(0, unbiased=False) if len(x) > 1 else torch.ones(x.shape[1], device=x.device)
        self.set_statistics(x.mean(0), std)

    @torch.no_grad()
    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Use statistics estimated elsewhere (privately under DP-SGD, across clients in `fl`)."""
        mean, std = mean.float().to(self.mean), std.float().to(self.std)
        self.mean.copy_(mean)
        self.std.copy_(torch.where(std > 1e-8, std, torch.ones_like(std)))  # constant features stay 0
        self.fitted.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


@ARCHITECTURES.register("mlp")
def mlp(*, num_classes: int, input_shape: tuple[int]) -> nn.Module:
    """Standardise, then two hidden ReLU layers of 64 units (fine-pruning prunes the second).

    `features` ends at the last hidden activation, as in the image models, so the
    families that read representations or prune units find it by the same name.
    """
    (f,) = input_shape
    features = nn.Sequential(Standardize(f), nn.Linear(f, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
    return nn.Sequential(features, nn.Linear(64, num_classes))


INPUT_KINDS["mlp"] = "tabular"
