"""Training-time defences of the certify family for `poisonguard train --defense NAME`.

- `gaussian_augment` (--sigma S): Gaussian noise augmentation, so that the smoothed model
  certifies (Cohen, Rosenfeld & Kolter, 2019).
- `partition` (--partitions K): Deep Partition Aggregation (Levine & Feizi, 2021); saves
  `model.safetensors` + `metadata.json` itself and returns the voting ensemble.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

from torch import nn

from poisonguard.certify.augment import fit_gaussian_augment
from poisonguard.certify.ensemble import PartitionTraining, check_partitions, save_ensemble, train_partition_models
from poisonguard.defenses import TRAIN_DEFENSES, TrainDefense, TrainJob
from poisonguard.errors import UserError

log = logging.getLogger(__name__)


def _gaussian_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--sigma", type=float, default=None,
                       help="gaussian-augment: noise standard deviation on [0, 1] images (use the sigma you will certify with)")


@dataclass(frozen=True)
class GaussianOptions:
    sigma: float | None = None


@dataclass(frozen=True)
class PartitionOptions:
    partitions: int | None = None
    batch_size: int | None = None  # None: 16, as partitions hold few samples


def _run_gaussian(job: TrainJob) -> nn.Module:
    sigma = job.options.sigma
    if sigma is None:
        raise UserError("--defense gaussian-augment needs --sigma")
    model = job.build_model()
    fit_gaussian_augment(model, job.train, job.config, sigma=sigma)
    job.extra["sigma"] = sigma
    job.report.set("defense", {"name": "gaussian_augment", "sigma": sigma})
    return model


def _partition_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--partitions", type=int, default=None,
                       help="partition: number K of hash partitions and base models (Deep Partition Aggregation)")


def _run_partition(job: TrainJob) -> nn.Module:
    from poisonguard.certify.poisoning import PartitionAggregation
    from poisonguard.certify.sections import poisoning_section

    k = job.options.partitions
    if k is None:
        raise UserError("--defense partition needs --partitions K")
    check_partitions(k, len(job.train))
    # Partitions hold few samples, so small batches unless the user chose one.
    batch = job.options.batch_size or 16
    recipe = PartitionTraining(epochs=job.config.epochs, batch_size=batch, lr=job.config.lr or 1e-3,
                               weight_decay=job.config.weight_decay, seed=job.config.seed, device=job.config.device)
    ensemble, info = train_partition_models(job.arch, job.train, k, recipe)
    meta = save_ensemble(ensemble, job.out_dir / "model.safetensors", arch=job.arch, classes=job.splits.classes,
                         input_shape=job.splits.input_shape, training={"command": "train", **info})
    job.saved = True
    job.report.set("model", {"path": str(job.out_dir / "model.safetensors"), "sha256": meta["sha256"],
                             "num_classes": job.splits.num_classes, "input_shape": list(job.splits.input_shape),
                             "architecture": f"partition_ensemble({job.arch} x {k})"})
    cert = PartitionAggregation().certify(ensemble, job.splits.test)
    job.report.set("poisoning_certification", cert)
    poisoning_section(job.report, cert)
    return ensemble


TRAIN_DEFENSES.register("gaussian_augment")(TrainDefense(
    help="Gaussian noise augmentation for randomized smoothing", add_arguments=_gaussian_arguments,
    run=_run_gaussian, options=GaussianOptions, implied_by=("sigma",)))
TRAIN_DEFENSES.register("partition")(TrainDefense(
    help="Deep Partition Aggregation: K base models on hash partitions", add_arguments=_partition_arguments,
    run=_run_partition, options=PartitionOptions, implied_by=("partitions",)))
