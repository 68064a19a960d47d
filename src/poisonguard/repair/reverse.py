"""A small, self-contained Neural Cleanse trigger reconstruction (Wang et al., 2019), so
unlearning works when no `scan` output is given.

For each class t, find the smallest mask m (H, W) and pattern p (C, H, W) such that
`(1 - m) * x + m * p` sends clean images to t: minimise cross-entropy to t plus
lambda * |m|_1, with lambda raised while the attack succeeds and lowered while it fails.
A class whose mask is an outlier on the small side (MAD anomaly index > 2) is flagged.
The full detector with its reports lives in the `detect` family; this is the minimal
version repair needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from poisonguard.attacks.triggers import PatchTrigger
from poisonguard.data import ImageData


@dataclass(frozen=True)
class Reconstruction:
    """Reconstructed triggers, one per class, and the MAD verdict."""

    triggers: tuple[PatchTrigger, ...]
    mask_l1: tuple[float, ...]
    anomaly_index: tuple[float, ...]
    flagged: tuple[int, ...]


def anomaly_index(l1: torch.Tensor) -> torch.Tensor:
    """Neural Cleanse's MAD anomaly index of mask norms (K,) -> (K,); positive = unusually small."""
    median = l1.median()
    mad = 1.4826 * (l1 - median).abs().median()
    return (median - l1) / mad.clamp_min(1e-12)


def reverse_trigger(model: nn.Module, data: ImageData, target: int, *, steps: int, batch_size: int, lr: float,
                    init_lambda: float, generator: torch.Generator, device: torch.device) -> PatchTrigger:
    """Optimise one class's mask (H, W) and pattern (C, H, W); return them as a PatchTrigger."""
    c, h, w = data.input_shape
    mask_logit = torch.full((h, w), -2.0, device=device, requires_grad=True)
    pattern_logit = torch.zeros((c, h, w), device=device, requires_grad=True)
    opt = torch.optim.Adam([mask_logit, pattern_logit], lr=lr, betas=(0.5, 0.9))
    lam = init_lambda
    x_all = data.x.to(device)
    labels = torch.full((batch_size,), target, device=device, dtype=torch.long)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        for _ in range(steps):
            idx = torch.randint(0, len(data), (batch_size,), generator=generator).to(device)
            mask, pattern = torch.sigmoid(mask_logit), torch.sigmoid(pattern_logit)
            logits = model((1 - mask) * x_all[idx] + mask * pattern)
            loss = F.cross_entropy(logits, labels) + lam * mask.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            # Neural Cleanse's schedule: tighten the mask while the attack works, relax it otherwise.
            success = float((logits.argmax(1) == labels).float().mean())
            lam = lam * 1.2 if success >= 0.95 else lam / 1.2
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
    with torch.no_grad():
        return PatchTrigger(torch.sigmoid(mask_logit).cpu(), torch.sigmoid(pattern_logit).cpu(), target)


def reconstruct_triggers(model: nn.Module, data: ImageData, *, steps: int = 100, batch_size: int = 32, lr: float = 0.1,
                         init_lambda: float = 1e-3, threshold: float = 2.0, generator: torch.Generator,
                         device: torch.device) -> Reconstruction:
    """Reverse-engineer a trigger for every class of `data` and flag small-mask outliers."""
    triggers = tuple(reverse_trigger(model, data, t, steps=steps, batch_size=batch_size, lr=lr, init_lambda=init_lambda,
                                     generator=generator, device=device) for t in range(data.num_classes))
    l1 = torch.stack([t.mask.sum() for t in triggers])
    index = anomaly_index(l1)
    flagged = tuple(int(k) for k in torch.nonzero(index > threshold).flatten())
    return Reconstruction(triggers, tuple(l1.tolist()), tuple(index.tolist()), flagged)
