"""STRIP (Gao, Xu, Wang, Chen, Ranasinghe & Nepal, "STRIP: A Defence Against Trojan Attacks
on Deep Neural Networks", ACSAC 2019).

Superimpose an input on random clean images and look at the entropy of the model's
predictions: a clean input's class is destroyed by the overlay, so predictions scatter (high
entropy); a trigger survives the overlay and keeps forcing the target (low entropy). The
paper uses it as a run-time input filter, with the entropy threshold set on clean inputs at a
chosen false-rejection rate (FRR): `StripFilter.fit(model, clean)` then `.reject(model, x)`.
As a sanitizer the score is -entropy of each training sample.
"""

from __future__ import annotations

import numpy as np
import torch

from poisonguard.data import ImageData
from poisonguard.errors import UserError
from poisonguard.sanitize.base import SANITIZERS, Method, ScoringInputs, check_number
from poisonguard.utils import batches, model_device


# The superimposition is image addition clipped to [0, 1]; a table row in raw units (ages,
# counts) would be clipped to a vector of 0s and 1s, and the entropy would read nothing.
NOT_FOR_TABLES = ("STRIP superimposes images (pixels added, clipped to [0, 1]); on table rows in raw units it would "
                  "clip every feature. For a table use sanitize's default (SCAn + spectral signatures) on the training rows, "
                  "or filter's default on incoming rows (the Mahalanobis filter)")


def check_images(data: ImageData) -> None:
    """UserError unless `data` are images (text has its own STRIP: sanitize/strip_text.py)."""
    if data.kind != "image":
        raise UserError(NOT_FOR_TABLES if data.kind == "tabular" else f"STRIP here takes images, not {data.kind} data")


@torch.no_grad()
def strip_entropy(model, x: torch.Tensor, overlays: torch.Tensor, *, draws: int, seed: int, batch_size: int = 128) -> np.ndarray:
    """Mean prediction entropy (N,) of each x superimposed (added, clipped to [0, 1], as the
    paper's image addition) on `draws` overlays drawn at random from `overlays`."""
    device = model_device(model)
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    out = []
    for sl in batches(len(x), batch_size):
        xb = x[sl]
        pick = torch.randint(0, len(overlays), (len(xb), draws), generator=gen)
        mixed = (xb[:, None] + overlays[pick]).clamp(0, 1).flatten(0, 1)
        p = torch.softmax(model(mixed.to(device)).float(), 1).cpu()
        ent = -(p * torch.log2(p.clamp_min(1e-12))).sum(1)
        out.append(ent.view(len(xb), draws).mean(1))
    model.train(was_training)
    return torch.cat(out).numpy()


class StripFilter:
    """STRIP as the paper's input filter: fit a threshold on clean inputs, reject below it.

    After `fit`, `clean_entropy` holds the clean inputs' entropies and `threshold` their FRR
    quantile.
    """

    def __init__(self, *, draws: int = 10, frr: float = 0.01, seed: int = 0) -> None:
        check_number("draws", draws, low=1, integer=True)
        check_number("frr", frr, low=0, high=0.5, open_low=True)
        self.draws, self.frr, self.seed = int(draws), float(frr), int(seed)
        self.threshold: float | None = None
        self.clean_entropy: np.ndarray | None = None
        self._overlays: torch.Tensor | None = None

    def fit(self, model, clean: ImageData, *, overlays: torch.Tensor | None = None) -> "StripFilter":
        """Set the threshold on `clean` inputs, superimposed on `overlays` (default: the clean inputs)."""
        check_images(clean)
        if len(clean) < 2:
            raise UserError("STRIP needs at least 2 clean inputs to set its threshold")
        self._overlays = clean.x if overlays is None else overlays
        self.clean_entropy = strip_entropy(model, clean.x, self._overlays, draws=self.draws, seed=self.seed)
        self.threshold = float(np.quantile(self.clean_entropy, self.frr))
        return self

    def entropy(self, model, x: torch.Tensor, *, overlays: torch.Tensor | None = None) -> np.ndarray:
        overlays = self._overlays if overlays is None else overlays
        if overlays is None:
            raise RuntimeError("call fit() first or give the overlays")
        return strip_entropy(model, x, overlays, draws=self.draws, seed=self.seed + 1)

    def reject(self, model, x: torch.Tensor) -> np.ndarray:
        """Boolean (N,): True where the input looks trojaned (entropy below the threshold)."""
        if self.threshold is None:
            raise RuntimeError("call fit() first")
        return self.entropy(model, x) < self.threshold


@SANITIZERS.register("strip")
class Strip(Method):
    """Scores (N,): minus the STRIP entropy of every training sample (the filter above, run on them)."""

    name, paper, needs, per_class = "strip", "Gao et al., ACSAC 2019", ("model",), False

    def __init__(self, *, draws: int = 10, frr: float = 0.01) -> None:
        self._filter = StripFilter(draws=draws, frr=frr)  # checks the hyperparameters
        self.draws, self.frr = self._filter.draws, self._filter.frr
        self.threshold: float | None = None

    def summary(self):
        return {"draws": self.draws, "frr": self.frr, "entropy_threshold": self.threshold}

    def score(self, inputs: ScoringInputs) -> np.ndarray:
        check_images(inputs.data)
        has_reference = inputs.reference is not None and len(inputs.reference) > 1
        overlays = inputs.reference.x if has_reference else inputs.data.x
        strip = StripFilter(draws=self.draws, frr=self.frr, seed=inputs.seed)
        if has_reference:
            # The paper's threshold: the FRR quantile of clean inputs' entropy.
            self.threshold = strip.fit(inputs.model, inputs.reference).threshold
        return -strip.entropy(inputs.model, inputs.data.x, overlays=overlays)

    def paper_flags(self, scores, labels, expected_rate):
        if self.threshold is None:
            raise UserError("strip's own rule needs clean held-out inputs (a test part) to set its threshold")
        return np.flatnonzero(-scores < self.threshold)
