"""ABL's isolation step (Li, Lyu, Koren, Lyu, Li & Ma, "Anti-Backdoor Learning: Training
Clean Models on Poisoned Data", NeurIPS 2021).

Backdoor samples are learnt much faster than clean ones. ABL trains a fresh model for a few
epochs with local gradient ascent (LGA): the loss is sign(L - gamma) * L, so once a batch's
loss falls below the floor gamma the step pushes it back up; clean samples hover around the
floor while poison, learnt through one shortcut feature, keeps falling below it. The samples
with the lowest loss at the end are isolated (the paper takes the lowest 1%); our score is
-log10(loss), cut by `calibrate.py` instead of at a fixed share.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from poisonguard.errors import UserError
from poisonguard.sanitize.base import SANITIZERS, Method, ScoringInputs, check_number
from poisonguard.sanitize.features import per_sample_loss
from poisonguard.utils import batches, resolve_device, seeded


@SANITIZERS.register("abl")
class ABLIsolation(Method):
    """Scores (N,): -log10 of each sample's loss after LGA training of a fresh model."""

    name, paper, needs, per_class = "abl", "Li et al., NeurIPS 2021", ("train_model",), False

    def __init__(self, *, epochs: int = 5, gamma: float = 0.5, lr: float = 1e-3, batch_size: int = 64) -> None:
        check_number("epochs", epochs, low=1, integer=True)
        check_number("gamma", gamma, low=0, open_low=True)
        check_number("lr", lr, low=0, open_low=True)
        check_number("batch_size", batch_size, low=1, integer=True)
        self.epochs, self.gamma, self.lr, self.batch_size = int(epochs), float(gamma), float(lr), int(batch_size)

    def score(self, inputs: ScoringInputs) -> np.ndarray:
        if inputs.train_model is None:
            raise UserError("abl needs to train a model of its own; no architecture is known for this data")
        device = resolve_device(inputs.device)
        with seeded(inputs.seed) as gen:  # dropout and initialisation draw from the global RNG
            model = inputs.train_model().to(device).train()
            opt = torch.optim.Adam(model.parameters(), lr=self.lr)
            x, y = inputs.data.x, inputs.data.y
            for _ in range(self.epochs):
                order = torch.randperm(len(y), generator=gen)
                for sl in batches(len(y), self.batch_size):
                    idx = order[sl]
                    loss = F.cross_entropy(model(x[idx].to(device)), y[idx].to(device))
                    # LGA: gradient ascent whenever the batch loss is below the floor.
                    lga = torch.sign(loss - self.gamma) * loss
                    opt.zero_grad(set_to_none=True)
                    lga.backward()
                    opt.step()
        losses = per_sample_loss(model.eval(), x, y)
        if not np.isfinite(losses).all():
            raise UserError("abl: the loss became NaN or Inf while training")
        return -np.log10(losses + 1e-8)

    def paper_flags(self, scores, labels, expected_rate):
        return isolation_rule(scores, 0.01)


def isolation_rule(scores: np.ndarray, share: float = 0.01) -> np.ndarray:
    """The paper's rule: positions of the `share` lowest-loss (highest-score) samples."""
    n = int(math.ceil(share * len(scores)))
    return np.sort(np.argsort(-scores)[:n])
