"""Stages of `demo` and `checklist`: each defence family adds one by registering a function.

A family adds its stage in `poisonguard/<family>/stage.py`:

    from poisonguard.stages import StageContext, register_stage

    @register_stage("scan", order=20)
    def scan_stage(ctx: StageContext) -> None:
        ...  # read ctx.model / ctx.splits, write into ctx.report, share with ctx.shared

Stages never modify `ctx.model`. A stage that fails is recorded in the report's `stages`
list with its error and the rest still run (a report card with one failed line is more
useful than none); the CLI exits with 3 (incomplete) when any stage failed and nothing was
found. A stage that does not apply to this model raises `NotApplicable(reason)`: it is
recorded as "not applicable" with the reason, instead of checking something else.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch import nn

from poisonguard.attacks.triggers import Trigger
from poisonguard.data import Splits
from poisonguard.errors import UserError
from poisonguard.registry import Registry, import_plugins
from poisonguard.report import Report

log = logging.getLogger(__name__)

# Imported on demand so a family that is not installed or not written yet is skipped.
STAGE_MODULES = (
    "poisonguard.detect.stage",
    "poisonguard.repair.stage",
    "poisonguard.certify.stage",
    "poisonguard.privacy.stage",
    "poisonguard.federated.stage",
)


@dataclass
class StageContext:
    """What every stage gets.

    Attributes:
        command: "demo" or "checklist".
        model: the model under examination (eval mode; stages copy before changing it).
        arch: its registered architecture name, when known (None for TorchScript etc.).
        splits: the user's data (train part = the little clean data a defender has).
        report: add JSON blocks and HTML sections here.
        out_dir: where the report goes; stages may write files here (e.g. trigger_3.npz).
        trigger: the real trigger when known (demo, or --trigger), to measure attack success.
        quick: keep the stage short (demo: about 20 s on 2 CPU cores).
        shared: results stages pass on, e.g. shared["scan"] = Detection for repair to use.
        clean_model: in the demo, a model trained without poison, for comparison.
    """

    command: str
    model: nn.Module
    splits: Splits
    report: Report
    out_dir: Path
    arch: str | None = None
    trigger: Trigger | None = None
    seed: int = 0
    device: str = "auto"
    quick: bool = False
    shared: dict[str, Any] = field(default_factory=dict)
    clean_model: nn.Module | None = None


class NotApplicable(Exception):
    """Raised by a stage that cannot examine this model (e.g. it would have to rebuild it); the message says why."""


@dataclass(frozen=True)
class Stage:
    name: str
    order: int
    run: Callable[[StageContext], None]


STAGES: Registry[Stage] = Registry("stage")


def register_stage(name: str, *, order: int = 50) -> Callable[[Callable[[StageContext], None]], Callable[[StageContext], None]]:
    def decorator(fn: Callable[[StageContext], None]) -> Callable[[StageContext], None]:
        STAGES.register(name)(Stage(name, order, fn))
        return fn

    return decorator


def load_stages() -> list[Stage]:
    import_plugins(STAGE_MODULES)
    return sorted((STAGES.get(n) for n in STAGES.names()), key=lambda s: s.order)


def run_stages(ctx: StageContext, *, only: list[str] | None = None) -> bool:
    """Run every registered stage (or those in `only`) in order; True when none failed."""
    ok = True
    chosen = [s for s in load_stages() if only is None or s.name in only]
    for number, stage in enumerate(chosen, 1):
        log.info("stage %d/%d: %s", number, len(chosen), stage.name)
        start = time.perf_counter()
        status, error = "ok", None
        try:
            stage.run(ctx)
        except NotApplicable as exc:
            status, error = "not_applicable", str(exc)
        except UserError as exc:
            status, error = "failed", str(exc)
        except Exception as exc:  # one broken stage must not lose the rest of the report card
            log.exception("stage %s failed", stage.name)
            status, error = "failed", f"{type(exc).__name__}: {exc}"
        ok &= status != "failed"
        ctx.report.append("stages", {"stage": stage.name, "status": status, "error": error,
                                     "seconds": round(time.perf_counter() - start, 2)})
        if status == "failed":
            log.error("stage %s failed: %s", stage.name, error)
        elif status == "not_applicable":
            log.warning("stage %s not applicable: %s", stage.name, error)
    return ok
