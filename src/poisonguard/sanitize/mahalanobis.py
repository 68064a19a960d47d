"""A run-time input filter by Mahalanobis distance in the model's penultimate layer.

Lee, Lee, Lee & Shin, "A Simple Unified Framework for Detecting Out-of-Distribution Samples
and Adversarial Attacks" (NeurIPS 2018): fit one Gaussian per class with a shared covariance
to the representations of clean labelled inputs, and score a new input by its squared
Mahalanobis distance to the mean of the class the model predicts for it. A backdoored model
sends triggered inputs to the target through a route clean inputs of that class never take,
so their representations lie away from the target's clean ones: the separation that spectral
signatures and SCAn find among poisoned training rows, read here one incoming input at a time.

Where STRIP cannot go (its image superposition, clipped to [0, 1], means nothing on a table's
raw units), this is the filter for tables: `poisonguard filter` uses it by default on table
rows and offers it on images (`--method mahalanobis`). Differences from the paper: one layer
(the input of the last Linear, `features.penultimate_features`), no input preprocessing, and the
threshold is the (1 - FRR) quantile of the distances of clean inputs held out from the fit:
half of `--data`'s clean inputs fit the means and the covariance, the other half set the bar.
"""

from __future__ import annotations

import numpy as np
import torch

from poisonguard.data import ImageData
from poisonguard.data.dataset import stratified_split
from poisonguard.errors import UserError
from poisonguard.metrics import predict
from poisonguard.sanitize.base import check_number
from poisonguard.sanitize.features import penultimate_features

MIN_CLEAN = 20  # clean inputs, half to fit and half to set the threshold
RIDGE = 1e-3  # covariance ridge, relative to its mean variance (a few hundred rows, 64 or more dimensions)


class MahalanobisFilter:
    """Fit on clean labelled inputs, then `distance` and `reject` new ones (larger = more suspect).

    After `fit`, `clean_distance` holds the held-out clean inputs' distances and `threshold`
    their (1 - frr) quantile.
    """

    def __init__(self, *, frr: float = 0.01, seed: int = 0) -> None:
        check_number("frr", frr, low=0, high=0.5, open_low=True)
        self.frr, self.seed = float(frr), int(seed)
        self.threshold: float | None = None
        self.clean_distance: np.ndarray | None = None
        self._means: np.ndarray | None = None
        self._precision: np.ndarray | None = None

    def fit(self, model, clean: ImageData) -> "MahalanobisFilter":
        if len(clean) < MIN_CLEAN:
            raise UserError(f"the Mahalanobis filter needs at least {MIN_CLEAN} clean inputs (half fit the classes, "
                            f"half set the threshold); --data has {len(clean)}")
        fit_part, bar_part = stratified_split(clean.y.numpy(), 0.5, self.seed)
        z = penultimate_features(model, clean.x[torch.as_tensor(fit_part)])
        self._means, self._precision = class_gaussians(z, clean.y.numpy()[fit_part], clean.num_classes)
        self.clean_distance = self.distance(model, clean.x[torch.as_tensor(bar_part)])
        self.threshold = float(np.quantile(self.clean_distance, 1 - self.frr))
        return self

    def distance(self, model, x: torch.Tensor) -> np.ndarray:
        """(N,) squared Mahalanobis distance of each input to its predicted class's clean mean."""
        if self._means is None:
            raise RuntimeError("call fit() first")
        z = penultimate_features(model, x)
        offset = z - self._means[predict(model, x).cpu().numpy()]
        return np.einsum("nd,de,ne->n", offset, self._precision, offset)

    def reject(self, model, x: torch.Tensor) -> np.ndarray:
        """Boolean (N,): True where the input lies beyond the threshold."""
        if self.threshold is None:
            raise RuntimeError("call fit() first")
        return self.distance(model, x) > self.threshold


def class_gaussians(z: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class means (K, D) and the precision (D, D) of the shared within-class covariance.

    A class absent from the fitting rows takes the overall mean, so an input the model sends
    there is judged against the data as a whole rather than refused.
    """
    from poisonguard.sanitize.scan import pooled_within_cov  # SCAn's shared within-class covariance

    z = z.astype(np.float64)
    means = np.stack([z[labels == c].mean(0) if (labels == c).any() else z.mean(0) for c in range(num_classes)])
    return means, np.linalg.pinv(pooled_within_cov(z, labels, ridge=RIDGE), hermitian=True)
