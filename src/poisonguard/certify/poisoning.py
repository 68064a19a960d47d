"""Certify a Deep Partition Aggregation ensemble against training-set poisoning (Levine & Feizi, 2021)."""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch

from poisonguard.certify.ensemble import PartitionEnsemble
from poisonguard.certify.partition import certified_accuracy_at, dpa_certificate
from poisonguard.certify.registry import CERTIFIERS
from poisonguard.data import ImageData
from poisonguard.errors import UserError
from poisonguard.results import PoisoningCertification
from poisonguard.utils import batches

DEFAULT_BUDGETS = (0, 1, 2, 5, 10, 20)


@CERTIFIERS.register("partition_aggregation")
class PartitionAggregation:
    """Per-example poisoning certificates of a partition ensemble's plurality vote.

    Args:
        budgets: numbers of poisoned training samples at which to report certified accuracy.
        batch_size: test images per forward pass.
    """

    def __init__(self, *, budgets: Sequence[int] = DEFAULT_BUDGETS, batch_size: int = 256) -> None:
        budgets = tuple(int(b) for b in budgets)
        if not budgets or min(budgets) < 0:
            raise ValueError(f"poisoning budgets must be non-negative integers, got {budgets}")
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.budgets, self.batch_size = budgets, int(batch_size)

    def certify(self, ensemble: PartitionEnsemble, data: ImageData) -> PoisoningCertification:
        if not isinstance(ensemble, PartitionEnsemble):
            raise UserError("poisoning certificates need a partition ensemble (poisonguard train --defense partition)")
        if len(data) == 0:
            raise UserError("no examples to certify")
        start = time.perf_counter()
        votes = torch.cat([ensemble(data.x[sl]) for sl in batches(len(data), self.batch_size)])
        pred, cert = dpa_certificate(votes)
        seconds = time.perf_counter() - start
        correct = pred == data.y
        # Certified size counts only where the prediction is right (else it certifies a wrong answer).
        useful = torch.where(correct, cert, torch.full_like(cert, -1))
        grid = list(range(0, int(cert.max()) + 2))
        curve = certified_accuracy_at(pred, cert, data.y, grid)
        return PoisoningCertification(
            method="partition_aggregation", partitions=ensemble.k, clean_accuracy=float(correct.float().mean()),
            certified_accuracy=certified_accuracy_at(pred, cert, data.y, self.budgets),
            median_certified=float(np.median(useful.numpy())), seconds=seconds,
            predictions=tuple(pred.tolist()), certified=tuple(cert.tolist()),
            extra={"curve": {"poisoned": grid, "certified_accuracy": list(curve.values())},
                   "examples": len(data), "threat_model": "insertions, removals and relabellings of training samples "
                   "(hash of the sample's inputs only, so each touches one partition); a changed sample counts twice"})
