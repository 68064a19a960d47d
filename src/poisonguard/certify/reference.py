"""A plain fp32 implementation of Cohen et al.'s CERTIFY loop, kept as the speed and
correctness reference: one example at a time, one batch of at most 400 noise draws per
forward pass, exactly as their `core.py` does. It reads the same noise stream
(`noise.py`) as the batched `SmoothedClassifier`, so both must return identical radii.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from poisonguard.certify.noise import PHASE_ESTIMATE, PHASE_SELECT, noise_blocks
from poisonguard.certify.smoothing import decide_certify


@torch.inference_mode()
def reference_certify(model: nn.Module, x: torch.Tensor, indices, *, sigma: float, n0: int, n: int, alpha: float,
                      seed: int = 0, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """CERTIFY for each image of x (N, C, H, W) with noise numbered by `indices`; returns (predictions, radii)."""
    model.eval()
    device = next(model.parameters()).device
    preds, radii = [], []
    for image, index in zip(x, indices):
        image = image.to(device)
        counts = np.zeros((1, 2, num_classes), dtype=np.int64)
        for p, (phase, num) in enumerate(((PHASE_SELECT, n0), (PHASE_ESTIMATE, n))):
            for noise in noise_blocks(tuple(image.shape), num, seed=seed, index=int(index), phase=phase, device=device):
                labels = model(image + noise * sigma).argmax(1)
                counts[0, p] += np.bincount(labels.cpu().numpy(), minlength=num_classes)
        p_, r_ = decide_certify(counts, n, sigma, alpha)
        preds.append(int(p_[0]))
        radii.append(float(r_[0]))
    return np.asarray(preds), np.asarray(radii)
