"""REFIT (Chen, Wang, Ding, Jin & Song, 2019, "REFIT: A Unified Watermark Removal
Framework For Deep Learning Systems With Limited Data").

Fine-tuning on a little clean data removes an embedded backdoor (a watermark, in the paper)
only with a learning rate large enough to leave the backdoor's basin, which on its own also
erases clean knowledge. REFIT keeps that knowledge with elastic weight consolidation
(Kirkpatrick et al., 2017): a quadratic penalty that anchors each weight in proportion to
its diagonal Fisher information on the available data, while weights the clean task does
not need (where the backdoor lives) move freely. Optionally, unlabelled in-distribution
data is labelled by the model itself and added to the fine-tuning set ("augmentation with
unlabelled data").

With no auxiliary data we extend that augmentation to what is always at hand: randomly
shifted copies of the clean images, labelled by the suspect model's own (softened) outputs,
i.e. distillation. The large learning rate starts after a short warm-up and its steps are
gradient-clipped, so that it moves the weights far without blowing up the converged model.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from poisonguard.repair.base import (
    Context, Repairer, Teacher, check_positive, finetune, register_repairer, set_finetune_aids, set_optimiser,
    shifter,
)
from poisonguard.train import predict
from poisonguard.utils import batches

log = logging.getLogger(__name__)


def diagonal_fisher(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 1) -> dict[str, torch.Tensor]:
    """Empirical diagonal Fisher information E[(d log p(y|x) / d theta)^2] per parameter.

    Args:
        x: images (N, C, H, W); y: labels (N,).
        batch_size: 1 gives the true per-sample squared gradients; larger batches are a
            cheaper approximation (squared mean gradient times the batch size).

    Returns:
        name -> tensor shaped like the parameter.
    """
    device = next(model.parameters()).device
    fisher = {n: torch.zeros_like(p) for n, p in model.named_parameters() if p.requires_grad}
    model.eval()  # batch-norm statistics must not move while measuring
    for sl in batches(len(x), batch_size):
        xb, yb = x[sl].to(device), y[sl].to(device)
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(xb), yb, reduction="sum").backward()
        for n, p in model.named_parameters():
            if p.grad is not None and n in fisher:
                fisher[n] += p.grad.detach() ** 2 / max(1, len(xb))
    model.zero_grad(set_to_none=True)
    return {n: f / len(x) for n, f in fisher.items()}


def ewc_penalty(model: nn.Module, fisher: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor]) -> torch.Tensor:
    """sum_i F_i (theta_i - theta*_i)^2 / 2 over all parameters (EWC, Kirkpatrick et al., 2017)."""
    total = torch.zeros((), device=next(model.parameters()).device)
    for n, p in model.named_parameters():
        if n in fisher:
            total = total + (fisher[n] * (p - anchor[n]) ** 2).sum()
    return total / 2


def step_decay(*, every: int, gamma: float):
    """REFIT's schedule: start large, multiply by `gamma` every `every` epochs."""
    return lambda epoch: gamma ** (epoch // every)


@register_repairer("refit")
class Refit(Repairer):
    """Fine-tuning with a large, decaying learning rate and EWC (Chen et al., 2019).

    Args:
        epochs: fine-tuning epochs.
        lr: initial learning rate (deliberately large: the paper's key finding).
        decay_every, gamma: multiply the learning rate by `gamma` every `decay_every` epochs.
        ewc_lambda: weight of the EWC penalty, with the Fisher information scaled so its
            largest entry is 1 (0 turns EWC off: plain fine-tuning).
        fisher_samples: at most this many clean images estimate the Fisher information.
        pseudo_label: label `aux_data` with the suspect model's predictions and add it.
        shift: random translations of up to this many pixels of every fine-tuning image (0: none).
        distill: weight of matching the suspect model's softened outputs on those images
            (the unlabelled-data augmentation applied to the shifted clean images; 0: off).
        temperature: softening of the suspect model's outputs.
        warmup_epochs: linear learning-rate warm-up before the step decay.
        clip_norm: largest gradient norm of a step (0: no clipping).
        batch_size, optimizer, weight_decay, seed, device: as everywhere.
    """

    def __init__(self, *, epochs: int = 30, lr: float = 0.1, decay_every: int = 5, gamma: float = 0.5,
                 ewc_lambda: float = 5.0, fisher_samples: int = 512, pseudo_label: bool = True, batch_size: int = 32,
                 optimizer: str = "sgd", weight_decay: float = 5e-4, shift: int = 1, distill: float = 1.0,
                 temperature: float = 2.0, warmup_epochs: float = 1.0, clip_norm: float = 5.0, seed: int = 0,
                 device: str = "auto") -> None:
        set_optimiser(self, epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer, weight_decay=weight_decay)
        check_positive("decay_every", decay_every, integer=True)
        check_positive("gamma", gamma)
        check_positive("ewc_lambda", ewc_lambda, allow_zero=True)
        check_positive("fisher_samples", fisher_samples, integer=True)
        set_finetune_aids(self, shift=shift, distill=distill, temperature=temperature,
                          warmup_epochs=warmup_epochs, clip_norm=clip_norm)
        self.decay_every, self.gamma = decay_every, gamma
        self.ewc_lambda, self.fisher_samples, self.pseudo_label = ewc_lambda, fisher_samples, bool(pseudo_label)
        self.seed, self.device = seed, device

    def _run(self, ctx: Context) -> dict[str, Any]:
        model, clean = ctx.model, ctx.clean
        n_fisher = min(len(clean), self.fisher_samples)
        pick = torch.randperm(len(clean), generator=ctx.generator)[:n_fisher]
        fisher = diagonal_fisher(model, clean.x[pick], clean.y[pick]) if self.ewc_lambda > 0 else {}
        if fisher:
            # Scale so the most important weight has Fisher 1: ewc_lambda then means the same for
            # any model, and lr * ewc_lambda bounds the penalty's curvature (stable SGD steps).
            peak = max(float(f.max()) for f in fisher.values())
            fisher = {n: f / max(peak, 1e-30) for n, f in fisher.items()}
        anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
        teacher = Teacher(model, temperature=self.temperature) if self.distill > 0 else None
        data, n_aux = clean, 0
        if ctx.aux is not None and self.pseudo_label and len(ctx.aux):
            # The suspect model labels the unlabelled images: its clean behaviour is what we keep.
            labels = predict(model, ctx.aux.x)
            data = clean.with_(x=torch.cat([clean.x, ctx.aux.x]), y=torch.cat([clean.y, labels]))
            n_aux = len(ctx.aux)

        def loss_fn(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            logits = m(x)
            loss = F.cross_entropy(logits, y)
            if teacher is not None:
                loss = loss + self.distill * teacher.loss(logits, x)
            if fisher:
                loss = loss + self.ewc_lambda * ewc_penalty(m, fisher, anchor)
            return loss

        tuned: dict[str, Any] = {}
        losses = finetune(model, data, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, generator=ctx.generator,
                          device=ctx.device, optimizer=self.optimizer, weight_decay=self.weight_decay,
                          schedule=step_decay(every=self.decay_every, gamma=self.gamma), loss_fn=loss_fn, desc="refit",
                          info=tuned, loss_scale=1 + self.distill, augment=shifter(self.shift, ctx.generator),
                          warmup_epochs=self.warmup_epochs, clip_norm=self.clip_norm or None)
        return {"fisher_samples": n_fisher if fisher else 0, "aux_samples": n_aux, "final_loss": losses[-1], **tuned}
