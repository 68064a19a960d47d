"""`poisonguard train --dp-epsilon EPS` (DP-SGD) or `--dp-noise SIGMA` (gradient shaping).

Registers the training defence `dp`; giving --dp-epsilon or --dp-noise selects it.
The privacy spent goes into the report's `privacy` block (DESIGN.md).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass

import torch
from torch import nn

from poisonguard.defenses import TRAIN_DEFENSES, TrainDefense, TrainJob
from poisonguard.errors import UserError, user_values
from poisonguard.privacy.accounting import ACCOUNTANTS, default_delta
from poisonguard.privacy.dp_sgd import DPSGD
from poisonguard.privacy.engine import DEFAULT_GRAD_SAMPLE_MODE, GRAD_SAMPLE_MODES
from poisonguard.privacy.report import privacy_section
from poisonguard.privacy.shaping import GradientShaping

log = logging.getLogger(__name__)

DEFAULT_BATCH = 256


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--dp-epsilon", type=float, default=None,
                       help="train with DP-SGD (Opacus) to this privacy budget epsilon")
    group.add_argument("--dp-delta", type=float, default=None,
                       help="delta of the (epsilon, delta) guarantee; must be below 1/N (default min(1e-5, 0.1/N))")
    group.add_argument("--max-grad-norm", type=float, default=1.0, help="per-sample gradient clipping bound C (default 1)")
    group.add_argument("--dp-noise", type=float, default=None,
                       help="gradient shaping instead: clip to C and add this much noise (x C), no epsilon claimed")
    group.add_argument("--accountant", choices=ACCOUNTANTS, default="prv", help="privacy accountant (default prv)")
    group.add_argument("--grad-sample-mode", choices=GRAD_SAMPLE_MODES, default=DEFAULT_GRAD_SAMPLE_MODE,
                       help=f"how Opacus gets per-sample gradients (default {DEFAULT_GRAD_SAMPLE_MODE}: fastest exact one)")
    group.add_argument("--max-physical-batch-size", type=int, default=256,
                       help="largest batch sent through the model at once (memory); default 256")


@dataclass(frozen=True)
class DPOptions:
    """`--defense dp`'s options (named like its command-line arguments)."""

    dp_epsilon: float | None = None
    dp_delta: float | None = None
    max_grad_norm: float = 1.0
    dp_noise: float | None = None
    accountant: str = "prv"
    grad_sample_mode: str = DEFAULT_GRAD_SAMPLE_MODE
    max_physical_batch_size: int = 256
    batch_size: int | None = None  # None: min(256, N)
    lr: float | None = None
    optimizer: str | None = None   # None: sgd


def trainer_from_options(args: DPOptions, job: TrainJob):
    """The DPSGD or GradientShaping the options ask for (one of --dp-epsilon, --dp-noise)."""
    eps, noise = args.dp_epsilon, args.dp_noise
    if eps is not None and noise is not None:
        raise UserError("give --dp-epsilon (DP-SGD with a guarantee) or --dp-noise (gradient shaping), not both")
    if eps is None and noise is None:
        raise UserError("--defense dp needs --dp-epsilon EPS (DP-SGD) or --dp-noise SIGMA (gradient shaping)")
    n = len(job.train)
    batch = args.batch_size if args.batch_size is not None else min(DEFAULT_BATCH, n)
    common = dict(max_grad_norm=args.max_grad_norm, epochs=job.config.epochs, batch_size=batch, lr=args.lr,
                  optimizer=args.optimizer or "sgd", grad_sample_mode=args.grad_sample_mode,
                  max_physical_batch_size=args.max_physical_batch_size, seed=job.config.seed, device=job.config.device)
    if eps is not None:
        delta = args.dp_delta if args.dp_delta is not None else default_delta(n)
        with user_values():  # the numbers came from the command line
            return DPSGD(epsilon=eps, delta=delta, accountant=args.accountant, **common)
    if args.dp_delta is not None:
        raise UserError("--dp-delta applies to DP-SGD (--dp-epsilon); gradient shaping claims no (epsilon, delta)")
    with user_values():
        return GradientShaping(noise_multiplier=noise, **common)


def _save_fixed(model: nn.Module, job: TrainJob) -> None:
    """Save a model whose layers DP replaced (e.g. BatchNorm -> GroupNorm) as TorchScript.

    Its state dict no longer fits the registered architecture, so a state-dict file could
    not be loaded back; TorchScript carries the new structure and loads without pickle.
    """
    from poisonguard.utils import atomic_path, atomic_write_text, sha256_file

    path = job.out_dir / "model.pt"
    model = model.cpu().eval()
    shape = job.splits.input_shape
    try:
        scripted = torch.jit.script(model)
    except Exception:  # scripting rejects some Python constructs; tracing handles these models
        scripted = torch.jit.trace(model, torch.rand(1, *shape))
    with atomic_path(path) as tmp:
        torch.jit.save(scripted, str(tmp))
    meta = {"tool": "poisonguard", "format": "torchscript", "architecture": None, "num_classes": job.splits.num_classes,
            "classes": list(job.splits.classes), "input_shape": list(shape), "file": path.name, "sha256": sha256_file(path),
            "training": {"command": "train", "defense": "dp", "based_on": job.arch}}
    atomic_write_text(path.parent / "metadata.json", json.dumps(meta, indent=2))
    job.report.set("model", {"path": str(path), "sha256": meta["sha256"], "num_classes": job.splits.num_classes,
                             "input_shape": list(shape), "architecture": None, "format": "torchscript",
                             "based_on": job.arch})
    job.saved = True


def run(job: TrainJob) -> nn.Module:
    trainer = trainer_from_options(job.options, job)
    model = job.build_model()
    trained, privacy = trainer.fit(model, job.train)
    job.report.set("privacy", privacy)
    job.extra["privacy"] = privacy
    privacy_section(job.report, privacy)
    if privacy.extra.get("fixes"):
        job.out_dir.mkdir(parents=True, exist_ok=True)
        _save_fixed(trained, job)
    return trained


TRAIN_DEFENSES.register("dp")(TrainDefense(
    help="DP-SGD with Opacus (--dp-epsilon) or gradient shaping (--dp-noise): bounds each sample's influence",
    add_arguments=add_arguments, run=run, options=DPOptions, implied_by=("dp_epsilon", "dp_noise")))
