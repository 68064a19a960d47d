"""Distillation into a re-initialised student (Yoshida & Fujino, 2020, "Disabling Backdoor and
Identifying Poison Data by using Knowledge Distillation in Backdoor Attacks on Deep Neural
Networks", AISec).

The suspect model teaches a freshly initialised copy of its own architecture on clean data
only: the student learns the teacher's soft outputs (temperature T) plus the true labels. The
trigger never appears in the clean inputs, so the student is never shown the backdoor's
mapping, while the soft labels pass on the clean behaviour far better than the few labels
alone. Fine-tuning methods start from the backdoored weights and must first leave the
backdoor's basin; a student never enters it.

Where the paper's rule fails: on a table with an in-range trigger (Tabdoor's), clean rows lie
next to the trigger's corner of the feature box and the teacher's soft labels there carry
the backdoor over: on statsmodels' fair, alpha 0.9 leaves 70% attack success, alpha 0.5 18%.
`retrain` (alpha 0: the student learns the clean labels alone, i.e. the architecture is
trained anew on the trusted rows) removes it (5%) at a cost of about 3 points of accuracy,
and is the default repair for tables, where a model trains in seconds
(notes/issue-19.md, benchmarks/tabular_checklist.py).

Re-initialisation calls `reset_parameters()` on every sub-module that has one; buffers that
are not trained (a built-in `mlp`'s fitted feature standardisation) are kept from the suspect.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from poisonguard.repair.base import (
    Context, Repairer, Teacher, check_positive, cosine, finetune, register_repairer, set_optimiser,
)


def reinitialise(model: nn.Module, generator_seed: int) -> int:
    """Reset every parameterised sub-module in place; returns how many were reset."""
    n = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(generator_seed)
        for module in model.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset) and any(True for _ in module.parameters(recurse=False)):
                reset()
                n += 1
    return n


@register_repairer("distillation")
class Distillation(Repairer):
    """Re-initialise the suspect's architecture and distil the suspect into it on clean data (tables).

    For tables only (`kinds`): an image model retrained from 5% of its data loses far more
    accuracy (MNIST, `retrain`: 96.4% -> 84.2%), and the image families keep their methods.

    Args:
        epochs, lr, batch_size, optimizer, weight_decay: the student's training on the clean data.
        temperature: softening of the teacher's outputs (Hinton et al., 2015; the paper's T).
        alpha: weight of the distillation term against the true labels' cross-entropy.
        seed, device: as everywhere.
    """

    kinds = ("tabular",)

    def __init__(self, *, epochs: int = 60, lr: float = 1e-3, batch_size: int = 64, optimizer: str = "adam",
                 weight_decay: float = 5e-4, temperature: float = 4.0, alpha: float = 0.9, seed: int = 0,
                 device: str = "auto") -> None:
        set_optimiser(self, epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer, weight_decay=weight_decay)
        check_positive("temperature", temperature)
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")
        self.temperature, self.alpha = temperature, alpha
        self.seed, self.device = seed, device

    def _run(self, ctx: Context) -> dict[str, Any]:
        teacher = Teacher(ctx.model, temperature=self.temperature)  # a frozen copy, before the reset
        reset = reinitialise(ctx.model, self.seed)
        if reset == 0:
            raise ValueError("distillation: the model has no sub-module with reset_parameters() to re-initialise")

        def loss_fn(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            logits = m(x)
            loss = F.cross_entropy(logits, y)
            return loss if self.alpha == 0 else self.alpha * teacher.loss(logits, x) + (1 - self.alpha) * loss

        info: dict[str, Any] = {}
        finetune(ctx.model, ctx.clean, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                 generator=ctx.generator, device=ctx.device, optimizer=self.optimizer,
                 weight_decay=self.weight_decay, schedule=cosine(self.epochs), loss_fn=loss_fn,
                 desc=self.name, info=info, loss_scale=1 + self.temperature ** 2 * self.alpha)
        return {"reinitialised_modules": reset, **info}


@register_repairer("retrain")
class Retrain(Distillation):
    """Re-initialise the suspect's architecture and train it on the clean data's labels alone."""

    def __init__(self, **kwargs) -> None:
        if kwargs.pop("alpha", 0.0) != 0.0:
            raise ValueError("retrain learns the labels alone (alpha 0); use distillation for soft labels")
        super().__init__(alpha=0.0, **kwargs)
