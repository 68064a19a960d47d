"""WILD (Liu, Li, Wen & Li, 2020, "Removing Backdoor-Based Watermarks in Neural Networks
with Limited Data").

With little clean data, WILD imitates triggers instead of knowing them: it fine-tunes on
clean images perturbed by trigger-like augmentations (random erasing / occlusion with
random content, additive noise) under their true labels, so no small region or pattern can
override the label, and aligns the feature distribution of the perturbed images with that
of the clean ones (here with a multi-bandwidth Gaussian-kernel MMD on the classifier's
input features), so the network learns to treat perturbed inputs like clean ones.

To keep clean accuracy with a few hundred images, the clean images are also randomly
shifted, the suspect model's outputs on them are distilled, and the fine-tuning warms up
and clips its gradients (shared helpers in `base.py`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from poisonguard.repair.base import (
    Context, Repairer, Teacher, check_fraction, check_positive, cosine, finetune, last_linear, register_repairer,
    set_finetune_aids, set_optimiser, shifter,
)


def random_erase(x: torch.Tensor, generator: torch.Generator, *, p: float = 0.5, area: tuple[float, float] = (0.01, 0.2),
                 aspect: tuple[float, float] = (0.3, 3.3)) -> torch.Tensor:
    """Random erasing (Zhong et al., 2020) with uniform-noise or constant content, per image.

    x: (N, C, H, W) in [0, 1]. Each image is erased with probability p by one rectangle of
    `area` share of the image (drawn log-uniformly) and `aspect` ratio; content is noise or a
    random constant.
    """
    n, c, h, w = x.shape
    out = x.clone()
    u = torch.rand(n, 5, generator=generator)
    for i in range(n):
        if u[i, 0] >= p:
            continue
        # Log-uniform area: triggers are mostly small patches, and a uniform draw over
        # (1%, 20%) would make nine in ten rectangles larger than 3% of the image.
        s = area[0] * (area[1] / area[0]) ** float(u[i, 1]) * h * w
        r = torch.exp(torch.log(torch.tensor(aspect[0])) + u[i, 2] * torch.log(torch.tensor(aspect[1] / aspect[0])))
        eh = int(min(h, max(1, round(float(torch.sqrt(s * r))))))
        ew = int(min(w, max(1, round(float(torch.sqrt(s / r))))))
        top = int(u[i, 3] * (h - eh + 1))
        left = int(u[i, 4] * (w - ew + 1))
        if torch.rand(1, generator=generator) < 0.5:
            fill = torch.rand(c, eh, ew, generator=generator)
        else:
            fill = torch.rand(c, 1, 1, generator=generator).expand(c, eh, ew)
        out[i, :, top : top + eh, left : left + ew] = fill.to(x.device, x.dtype)
    return out


def gaussian_noise(x: torch.Tensor, generator: torch.Generator, *, sigma: float) -> torch.Tensor:
    """x + N(0, s^2) with s drawn uniformly in [0, sigma] per image, clipped to [0, 1]."""
    n = x.shape[0]
    scale = torch.rand(n, 1, 1, 1, generator=generator) * sigma
    noise = torch.randn(x.shape, generator=generator) * scale
    return (x + noise.to(x.device, x.dtype)).clamp(0, 1)


def trigger_imitation(x: torch.Tensor, generator: torch.Generator, *, erase_p: float, noise_sigma: float) -> torch.Tensor:
    """WILD's augmentation: random erasing/occlusion then additive noise, (N, C, H, W) -> same."""
    out = random_erase(x, generator, p=erase_p)
    if noise_sigma > 0:
        out = gaussian_noise(out, generator, sigma=noise_sigma)
    return out


def mmd(a: torch.Tensor, b: torch.Tensor, *, scales: tuple[float, ...] = (0.25, 1.0, 4.0)) -> torch.Tensor:
    """Squared maximum mean discrepancy between feature sets a (N, D) and b (M, D).

    Gaussian kernels at several multiples of the median pairwise distance, so the loss does
    not depend on the feature scale.
    """
    both = torch.cat([a, b])
    d2 = torch.cdist(both, both).pow(2)
    median = d2.detach()[d2.detach() > 0].median() if (d2 > 0).any() else torch.tensor(1.0, device=a.device)
    k = sum(torch.exp(-d2 / (s * median)) for s in scales)
    n = len(a)
    return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()


class FeatureTap:
    """Records the input of a layer (the classifier's features) on each forward pass."""

    def __init__(self, layer: nn.Module) -> None:
        self.value: torch.Tensor | None = None
        self.handle = layer.register_forward_hook(self._hook)

    def _hook(self, _m, inputs, _out) -> None:
        self.value = inputs[0].flatten(1)

    def remove(self) -> None:
        self.handle.remove()


@register_repairer("wild")
class Wild(Repairer):
    """Trigger-imitating augmentation plus feature distribution alignment (Liu et al., 2020).

    Args:
        epochs, lr, batch_size, optimizer, weight_decay: fine-tuning (cosine decay).
        erase_p: probability that an image gets a random erased/occluded rectangle.
        noise_sigma: largest standard deviation of the additive Gaussian noise.
        align_weight: weight of the feature-distribution alignment (MMD) loss.
        clean_weight: weight of the cross-entropy on the unperturbed images.
        shift: random translations of up to this many pixels of every image (0: none).
        distill: weight of distilling the suspect model's outputs on the unperturbed (shifted)
            images (0: off). Never on the erased ones: an erased patch may fire the backdoor.
        temperature: softening of the distilled outputs.
        warmup_epochs: linear learning-rate warm-up before the cosine decay.
        clip_norm: largest gradient norm of a step (0: no clipping).
        seed, device: as everywhere.
    """

    kinds = ("image",)  # random erasing and pixel noise imitate image triggers; a table has no patches

    def __init__(self, *, epochs: int = 20, lr: float = 0.06, batch_size: int = 32, optimizer: str = "sgd",
                 weight_decay: float = 5e-4, erase_p: float = 1.0, noise_sigma: float = 0.1, align_weight: float = 1.0,
                 clean_weight: float = 1.0, shift: int = 1, distill: float = 1.0, temperature: float = 2.0,
                 warmup_epochs: float = 1.0, clip_norm: float = 5.0, seed: int = 0, device: str = "auto") -> None:
        set_optimiser(self, epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer, weight_decay=weight_decay)
        check_fraction("erase_p", erase_p)
        check_positive("noise_sigma", noise_sigma, allow_zero=True)
        check_positive("align_weight", align_weight, allow_zero=True)
        check_positive("clean_weight", clean_weight, allow_zero=True)
        set_finetune_aids(self, shift=shift, distill=distill, temperature=temperature,
                          warmup_epochs=warmup_epochs, clip_norm=clip_norm)
        self.erase_p, self.noise_sigma, self.align_weight, self.clean_weight = erase_p, noise_sigma, align_weight, clean_weight
        self.seed, self.device = seed, device

    def _run(self, ctx: Context) -> dict[str, Any]:
        model = ctx.model
        name, head = last_linear(model, ctx.clean.x[:2].to(ctx.device))
        teacher = Teacher(model, temperature=self.temperature) if self.distill > 0 else None  # before the tap
        tap = FeatureTap(head)
        gen = ctx.generator
        aligns: list[float] = []

        def loss_fn(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            aug = trigger_imitation(x, gen, erase_p=self.erase_p, noise_sigma=self.noise_sigma)
            logits = m(torch.cat([x, aug]))
            feats = tap.value
            n = len(x)
            loss = F.cross_entropy(logits[n:], y) + self.clean_weight * F.cross_entropy(logits[:n], y)
            if teacher is not None:
                loss = loss + self.distill * teacher.loss(logits[:n], x)
            if self.align_weight > 0 and n > 1:
                align = mmd(feats[:n], feats[n:])
                aligns.append(float(align.detach()))
                loss = loss + self.align_weight * align
            return loss

        tuned: dict[str, Any] = {}
        try:
            losses = finetune(model, ctx.clean, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, generator=gen,
                              device=ctx.device, optimizer=self.optimizer, weight_decay=self.weight_decay,
                              schedule=cosine(self.epochs), loss_fn=loss_fn, desc="wild",
                              loss_scale=1 + self.clean_weight + self.distill, info=tuned,
                              augment=shifter(self.shift, gen), warmup_epochs=self.warmup_epochs,
                              clip_norm=self.clip_norm or None)
        finally:
            tap.remove()
        return {"feature_layer": name, "final_loss": losses[-1],
                "final_alignment": aligns[-1] if aligns else None, **tuned}
