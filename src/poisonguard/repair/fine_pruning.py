"""Fine-pruning (Liu, Dolan-Gavitt & Garg, 2018, "Fine-Pruning: Defending Against
Backdooring Attacks on Deep Neural Networks").

Backdoor behaviour tends to live in channels of the last convolutional layer that clean
inputs leave dormant. Prune that layer's channels in order of increasing mean activation
on clean data, stopping before clean accuracy would drop by more than a budget, then
fine-tune the pruned network on the clean data to remove what pruning left behind.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from poisonguard.errors import UserError
from poisonguard.metrics import accuracy, attack_success_or_none
from poisonguard.repair.base import (
    Context, Repairer, Teacher, check_fraction, check_positive, cosine, execution_order, finetune, named_layers,
    register_repairer, set_finetune_aids, set_optimiser, shifter,
)
from poisonguard.utils import batches

PRUNABLE = (nn.Conv2d, nn.BatchNorm2d, nn.Linear)
CONV_LIKE = (nn.Conv2d, nn.BatchNorm2d)


def find_prune_layer(model: nn.Module, sample: torch.Tensor, layer: str | None = None) -> str:
    """Name of the layer to prune: `layer` if given, else the last convolutional layer run.

    A BatchNorm2d that runs after the last convolution (as in pre-activation ResNets, whose
    final `bn` feeds the classifier) counts as that convolution's output channels. A model of
    feature vectors (sample (N, F): an MLP) has no convolution: its last hidden `nn.Linear`
    (the one before the classifier head) is pruned instead, unit by unit, the paper's
    "last layer before the output" carried over to fully connected networks.
    """
    modules = dict(model.named_modules())
    if layer is not None:
        if layer not in modules or not isinstance(modules[layer], PRUNABLE) or not layer:
            raise UserError(f"cannot prune layer {layer!r}; prunable layers: {_describe(model)}")
        return layer
    order = execution_order(model, sample, CONV_LIKE)
    if not order and sample.ndim == 2:
        linears = execution_order(model, sample, (nn.Linear,))
        if len(linears) >= 2:
            return linears[-2]
    if not order:
        raise UserError("fine-pruning: the model has no convolutional layer; "
                        f"choose a layer to prune with layer= (--prune-layer): {_describe(model)}")
    return order[-1]


def _describe(model: nn.Module) -> str:
    layers = named_layers(model, PRUNABLE)
    if not layers:
        return "none"
    return ", ".join(f"{n} ({type(m).__name__}, {_channels(m)} channels)" for n, m in layers.items())


def _channels(m: nn.Module) -> int:
    if isinstance(m, nn.Conv2d):
        return m.out_channels
    if isinstance(m, nn.BatchNorm2d):
        return m.num_features
    return m.out_features


def _shape(mask: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return mask.view(1, -1, *([1] * (out.ndim - 2)))


@torch.no_grad()
def mean_activation(model: nn.Module, layer: nn.Module, x: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
    """Mean ReLU activation of each output channel of `layer` over images x (N, C, H, W) -> (channels,)."""
    total: list[torch.Tensor] = []

    def hook(_m, _i, out):
        dims = [d for d in range(out.ndim) if d != 1]
        total.append(out.clamp(min=0).mean(dim=dims) * out.shape[0])

    handle = layer.register_forward_hook(hook)
    device = next(model.parameters()).device
    try:
        model.eval()
        for sl in batches(len(x), batch_size):
            model(x[sl].to(device))
    finally:
        handle.remove()
    return torch.stack(total).sum(0) / len(x)


class ChannelMask:
    """Multiplies a layer's output channels by a 0/1 mask through a forward hook."""

    def __init__(self, layer: nn.Module, channels: int, device: torch.device) -> None:
        self.mask = torch.ones(channels, device=device)
        self.handle = layer.register_forward_hook(lambda _m, _i, out: out * _shape(self.mask, out))

    def remove(self) -> None:
        self.handle.remove()


@torch.no_grad()
def zero_channels(layer: nn.Module, pruned: torch.Tensor) -> None:
    """Make the pruned channels output exactly zero by zeroing their weights and biases."""
    for param in (getattr(layer, "weight", None), getattr(layer, "bias", None)):
        if param is not None:
            param[pruned] = 0


@register_repairer("fine_pruning")
class FinePruning(Repairer):
    """Prune dormant channels of the last convolutional layer, then fine-tune (Liu et al., 2018).

    Args:
        max_accuracy_drop: stop pruning before clean accuracy (on the clean data) would
            fall by more than this (the paper stops at a 4% drop).
        max_prune_fraction: never prune more than this share of the layer's channels.
        prune_step: channels pruned per step (0: about 1/64 of the layer, at least 1).
        layer: dotted name of the layer to prune (default: the last convolutional layer).
        epochs, lr, batch_size, optimizer, weight_decay: the fine-tuning after pruning
            (linear warm-up over `warmup_epochs`, then cosine decay).
        shift: random translations of up to this many pixels while fine-tuning (0: none): the
            standard augmentation, which the few clean images need. Kept small because a model
            trained without augmentation is invariant only to small shifts; larger ones make
            it relearn invariance from the few images (set 4 for a CIFAR model trained with crops).
        distill: weight of distilling the unpruned suspect model's outputs on the clean
            (shifted) images, which keeps its clean behaviour (0: plain cross-entropy).
        temperature: softening of the distilled outputs.
        clip_norm: largest gradient norm of a fine-tuning step (0: no clipping); keeps the large
            learning rate, which removes the backdoor, from blowing up the converged model.
        seed, device: as everywhere.
    """

    def __init__(self, *, max_accuracy_drop: float = 0.04, max_prune_fraction: float = 0.9, prune_step: int = 0,
                 layer: str | None = None, epochs: int = 40, lr: float = 0.05, batch_size: int = 32,
                 optimizer: str = "sgd", weight_decay: float = 5e-4, warmup_epochs: float = 1.0, shift: int = 1,
                 distill: float = 1.0, temperature: float = 2.0, clip_norm: float = 5.0, seed: int = 0,
                 device: str = "auto") -> None:
        check_fraction("max_accuracy_drop", max_accuracy_drop)
        check_fraction("max_prune_fraction", max_prune_fraction)
        check_positive("prune_step", prune_step, integer=True, allow_zero=True)
        set_optimiser(self, epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer, weight_decay=weight_decay,
                      allow_zero_epochs=True)
        set_finetune_aids(self, shift=shift, distill=distill, temperature=temperature,
                          warmup_epochs=warmup_epochs, clip_norm=clip_norm)
        self.max_accuracy_drop, self.max_prune_fraction, self.prune_step = max_accuracy_drop, max_prune_fraction, prune_step
        self.layer, self.seed, self.device = layer, seed, device

    def _run(self, ctx: Context) -> dict[str, Any]:
        model, clean = ctx.model, ctx.clean
        name = find_prune_layer(model, clean.x[:2].to(ctx.device), self.layer)
        layer = dict(model.named_modules())[name]
        channels = _channels(layer)
        activation = mean_activation(model, layer, clean.x)
        order = torch.argsort(activation.cpu())  # most dormant first
        step = self.prune_step or max(1, math.ceil(channels / 64))
        limit = int(self.max_prune_fraction * channels)
        base = accuracy(model, clean)
        teacher = Teacher(model, temperature=self.temperature) if self.distill > 0 else None  # before the mask hook
        mask = ChannelMask(layer, channels, ctx.device)
        curve = [{"pruned": 0, "fraction": 0.0, "clean_accuracy": base,
                  "attack_success_rate": attack_success_or_none(model, clean, ctx.trigger)}]
        n_pruned = 0
        try:
            for k in range(step, limit + 1, step):
                mask.mask.fill_(1)
                mask.mask[order[:k].to(ctx.device)] = 0
                acc = accuracy(model, clean)
                curve.append({"pruned": k, "fraction": k / channels, "clean_accuracy": acc,
                              "attack_success_rate": attack_success_or_none(model, clean, ctx.trigger)})
                if base - acc > self.max_accuracy_drop:
                    break  # this step would cost too much accuracy: keep the previous one
                n_pruned = k
            pruned = order[:n_pruned].to(ctx.device)
            mask.mask.fill_(1)
            mask.mask[pruned] = 0
            accuracy_pruned = accuracy(model, clean)
            tuned: dict[str, Any] = {}

            def loss_fn(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                logits = m(x)
                loss = F.cross_entropy(logits, y)
                return loss + self.distill * teacher.loss(logits, x) if teacher is not None else loss

            if self.epochs:
                finetune(model, clean, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                         generator=ctx.generator, device=ctx.device, optimizer=self.optimizer,
                         weight_decay=self.weight_decay, schedule=cosine(self.epochs), loss_fn=loss_fn,
                         desc="fine-pruning", info=tuned, loss_scale=1 + self.distill,
                         augment=shifter(self.shift, ctx.generator),
                         warmup_epochs=self.warmup_epochs, clip_norm=self.clip_norm or None)
        finally:
            mask.remove()
        zero_channels(layer, pruned)
        return {"layer": name, "channels": channels, "pruned_channels": n_pruned,
                "pruned_fraction": n_pruned / channels, "clean_accuracy_after_pruning": accuracy_pruned,
                "pruned_indices": pruned.cpu().tolist(), "curve": curve, "curve_measured_on": "clean_data", **tuned}
