"""TABOR (Guo et al., 2019, "TABOR: A Highly Accurate Approach to Inspecting and Restoring
Trojan Backdoors in AI Systems", IEEE ICDM).

Neural Cleanse's objective plus TABOR's regularisers, which shrink the space of spurious
"adversarial" triggers: (R1) overly large triggers - elastic-net penalties on the mask and
on the pattern outside the mask; (R2) scattered triggers - total variation of both;
(R3) blocking triggers - the image with the trigger area cut out must keep its label;
(R4) overlaying triggers - the trigger alone must already produce the target. The reversed
triggers are then ranked by TABOR's quality measure (small, compact, effective triggers
that do not hide the object first), and the outlier test runs on the mask sizes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from poisonguard.detect import DETECTORS
from poisonguard.detect.anomaly import THRESHOLD
from poisonguard.detect.base import check_number, clean_accuracy, make_detection
from poisonguard.detect.engine import stamp
from poisonguard.detect.neural_cleanse import NeuralCleanse
from poisonguard.results import Detection
from poisonguard.utils import model_device


def total_variation(t: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation per item: (k, ..., H, W) -> (k,)."""
    dh = (t[..., 1:, :] - t[..., :-1, :]).abs().flatten(1).sum(1)
    dw = (t[..., :, 1:] - t[..., :, :-1]).abs().flatten(1).sum(1)
    return dh + dw


def tabor_regularisers(model: nn.Module, x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor, patterns: torch.Tensor,
                       targets: torch.Tensor, *, weights: dict[str, float]) -> torch.Tensor:
    """TABOR's extra loss terms per class.

    Args:
        x (B, C, H, W) clean images, y (B,) their labels, masks (k, H, W), patterns (k, C, H, W),
        targets (k,); weights: l2 (mask), pattern (elastic net outside the mask), smooth_mask,
        smooth_pattern, block, overlay.
    Returns:
        (k,) loss terms to add to NC's CE + cost * ||m||_1.
    """
    k, b = len(masks), len(x)
    outside = (1 - masks).unsqueeze(1) * patterns                           # (k, C, H, W)
    loss = weights["l2"] * masks.pow(2).flatten(1).sum(1)
    loss = loss + weights["pattern"] * (outside.abs().flatten(1).sum(1) + outside.pow(2).flatten(1).sum(1))
    loss = loss + weights["smooth_mask"] * total_variation(masks)
    loss = loss + weights["smooth_pattern"] * total_variation(outside)
    if weights["block"] > 0:
        # Cutting the trigger area out (pattern 0) must not change the true label.
        blocked = stamp(x, masks, torch.zeros_like(patterns))
        ce = F.cross_entropy(model(blocked), y.repeat(k), reduction="none").view(k, b).mean(1)
        loss = loss + weights["block"] * ce
    if weights["overlay"] > 0:
        # The trigger on a blank image must already give the target.
        alone = masks.unsqueeze(1) * patterns
        loss = loss + weights["overlay"] * F.cross_entropy(model(alone), targets, reduction="none")
    return loss


@torch.no_grad()
def quality(model: nn.Module, x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor, patterns: torch.Tensor,
            attack_success: torch.Tensor) -> torch.Tensor:
    """TABOR's trigger quality measure per class (lower = more like a real trojan trigger).

    log(relative mask size) + log(relative scatter) - log(attack success)
    - log(accuracy with the trigger area cut out / clean accuracy): a real trigger is small,
    compact, effective, and does not sit on the object.
    Args: masks (K, H, W), patterns (K, C, H, W), attack_success (K,). Returns (K,).
    """
    k = len(masks)
    d = masks.shape[-1] * masks.shape[-2]
    eps = 1e-6
    size = masks.abs().flatten(1).sum(1) / d
    scatter = total_variation(masks) / d
    acc_clean = max(clean_accuracy(model, x, y), eps)
    kept = []
    for i in range(k):
        blocked = stamp(x, masks[i:i + 1], torch.zeros_like(patterns[i:i + 1]))
        kept.append(clean_accuracy(model, blocked, y))
    fidelity = torch.tensor(kept).clamp_min(eps) / acc_clean
    return (torch.log(size + eps) + torch.log(scatter + eps) - torch.log(attack_success.clamp_min(eps))
            - torch.log(fidelity)).double()


@DETECTORS.register("tabor")
class Tabor(NeuralCleanse):
    """TABOR: NC's engine with TABOR's regularisers and quality ranking.

    Extra keyword-only weights (defaults scaled to pixel sums on 28x28-32x32 images):
    `l2`, `pattern`, `smooth_mask`, `smooth_pattern`, `block`, `overlay`.
    """

    name = "tabor"

    def __init__(self, *, l2: float = 1e-3, pattern: float = 1e-5, smooth_mask: float = 1e-3,
                 smooth_pattern: float = 1e-5, block: float = 0.1, overlay: float = 0.01,
                 threshold: float = THRESHOLD, seed: int = 0, device: str = "auto", **inversion) -> None:
        super().__init__(threshold=threshold, seed=seed, device=device, **inversion)
        self.weights = {"l2": l2, "pattern": pattern, "smooth_mask": smooth_mask, "smooth_pattern": smooth_pattern,
                        "block": block, "overlay": overlay}
        for key, value in self.weights.items():
            check_number(key, value, low=0)

    def extra_loss(self):
        weights = dict(self.weights)
        return lambda model, x, y, masks, patterns, targets: tabor_regularisers(
            model, x, y, masks, patterns, targets, weights=weights)

    def verdict(self, model, data, inv, num_classes: int, start: float) -> Detection:
        det = super().verdict(model, data, inv, num_classes, start)
        dev = model_device(model)
        x = data.x.to(dev)
        q = quality(model, x, data.y.to(dev), inv.masks.to(dev), inv.patterns.to(dev), inv.attack_success)
        ranking = [inv.targets[i] for i in torch.argsort(q, stable=True).tolist()]
        flagged = sorted(det.flagged_classes, key=ranking.index)
        q_list = [float(v) if math.isfinite(v) else None for v in q.tolist()]
        return make_detection(
            self.name, index=torch.tensor(det.anomaly_index), flagged=flagged, start=start,
            sizes=torch.tensor(det.mask_l1), masks=inv.masks, patterns=inv.patterns, threshold=self.threshold,
            extra={**det.extra, "quality": q_list, "ranking": ranking},
        )
