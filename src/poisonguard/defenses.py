"""Training-time defences for `poisonguard train --defense NAME` (DP-SGD, Gaussian
augmentation, partition aggregation, ...). A family registers one in its own module:

    TRAIN_DEFENSES.register("gaussian_augment")(TrainDefense(
        help="...", add_arguments=..., run=..., implied_by=("sigma",)))

`run(job)` trains and returns the model the command then evaluates (and saves to
DIR/model.pt unless the defence saved its own files and set `job.saved = True`).
Each defence declares its options as a frozen dataclass (`options`); the command line fills
one from its arguments of the same names, and `run` reads `job.options`, never argparse.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch import nn

from poisonguard.attacks.triggers import Trigger
from poisonguard.data import ImageData, Splits
from poisonguard.registry import Registry, import_plugins
from poisonguard.report import Report
from poisonguard.train import FitConfig

DEFENSE_MODULES = (
    "poisonguard.certify.defenses",
    "poisonguard.privacy.defenses",
)


@dataclass
class TrainJob:
    """Everything a training defence needs. `train` may hold poisoned samples; `options` is an
    instance of the defence's `options` dataclass."""

    options: Any
    splits: Splits
    train: ImageData
    arch: str
    config: FitConfig
    out_dir: Path
    report: Report
    trigger: Trigger | None = None
    saved: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    # Makes the fresh model when the registered image/table architectures cannot (a text model
    # needs its tokenizer's vocabulary size).
    model_factory: Callable[[], nn.Module] | None = None

    def build_model(self) -> nn.Module:
        """A freshly initialised model of the job's architecture for its data, seeded by its recipe."""
        from poisonguard.models import build_model

        if self.model_factory is not None:
            return self.model_factory()
        return build_model(self.arch, num_classes=self.splits.num_classes, input_shape=self.splits.input_shape,
                           seed=self.config.seed)


@dataclass(frozen=True)
class TrainDefense:
    help: str
    add_arguments: Callable[[argparse._ArgumentGroup], None]
    run: Callable[[TrainJob], nn.Module]
    # A frozen dataclass whose fields are named like the defence's arguments' dests.
    options: type
    # Giving any of these options (not None) selects the defence without --defense.
    implied_by: tuple[str, ...] = ()


TRAIN_DEFENSES: Registry[TrainDefense] = Registry("training defence")


def load_defenses() -> Registry[TrainDefense]:
    import_plugins(DEFENSE_MODULES)
    return TRAIN_DEFENSES
