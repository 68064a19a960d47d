"""A faithful one-class-at-a-time Neural Cleanse, the reference the batched engine is timed against.

Written the way the original NC code runs (Wang et al., 2019): for each class in turn, its
own torch.optim.Adam, its own Python loop over epochs and mini-batches, and the cost schedule
as plain Python counters. It shares only the random draws with the engine (the per-class
initial mask/pattern and the per-epoch batch order), so both see the same numbers and must
reach the same verdict.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from poisonguard.detect.engine import InversionConfig, epoch_order, from_tanh_space, initial_trigger, to_tanh_space


def reverse_one_class(model, x, target: int, config: InversionConfig, seed: int):
    """NC for one target class: returns (mask (H, W), pattern (C, H, W), found, epochs)."""
    mask0, pattern0 = initial_trigger(target, tuple(x.shape[1:]), seed)
    mask_w = to_tanh_space(mask0).unsqueeze(0).to(x.device).requires_grad_(True)      # (1, 1, H, W)
    pattern_w = to_tanh_space(pattern0).unsqueeze(0).to(x.device).requires_grad_(True)  # (1, C, H, W)
    opt = torch.optim.Adam([mask_w, pattern_w], lr=config.lr, betas=config.betas)
    steps = config.steps_per_epoch or math.ceil(len(x) / config.batch_size)
    cost = config.init_cost
    up_count = down_count = 0
    up_flag = down_flag = False
    reg_best = es_best = math.inf
    es_count = 0
    best = None
    epochs = 0
    for epoch in range(config.epochs):
        acc_sum = reg_sum = 0.0
        for idx in epoch_order(len(x), epoch, seed, steps, config.batch_size):
            xb = x[idx.to(x.device)]
            mask = from_tanh_space(mask_w)
            pattern = from_tanh_space(pattern_w)
            adv = (1 - mask) * xb + mask * pattern
            logits = model(adv)
            t = torch.full((len(xb),), target, dtype=torch.long, device=x.device)
            ce = F.cross_entropy(logits, t)
            reg = mask.abs().sum()
            loss = ce + cost * reg
            opt.zero_grad()
            loss.backward()
            opt.step()
            acc_sum += float((logits.argmax(1) == t).float().mean())
            reg_sum += float(reg.detach())
        epochs += 1
        avg_acc, avg_reg = acc_sum / steps, reg_sum / steps
        if avg_acc >= config.attack_threshold and avg_reg < reg_best:
            best = (from_tanh_space(mask_w).detach()[0, 0].clone(), from_tanh_space(pattern_w).detach()[0].clone())
            reg_best = avg_reg
        if reg_best < math.inf:
            if reg_best >= config.early_stop_threshold * es_best:
                es_count += 1
            else:
                es_count = 0
            es_best = min(es_best, reg_best)
        if config.early_stop and up_flag and down_flag and es_count >= config.early_stop_patience:
            break
        if avg_acc >= config.attack_threshold:
            up_count += 1
            down_count = 0
        else:
            up_count = 0
            down_count += 1
        if up_count >= config.patience:
            up_count = 0
            cost *= config.cost_multiplier
            up_flag = True
        elif down_count >= config.patience:
            down_count = 0
            cost /= config.cost_multiplier ** 1.5
            down_flag = True
    if best is None:
        best = (from_tanh_space(mask_w).detach()[0, 0], from_tanh_space(pattern_w).detach()[0])
    return best[0], best[1], reg_best < math.inf, epochs


def sequential_neural_cleanse(model, x, num_classes: int, config: InversionConfig, seed: int = 0):
    """Masks (K, H, W), patterns (K, C, H, W), mask L1 (K,), epochs (K,), one class after another."""
    masks, patterns, epochs = [], [], []
    for target in range(num_classes):
        m, p, _, e = reverse_one_class(model, x, target, config, seed)
        masks.append(m)
        patterns.append(p)
        epochs.append(e)
    masks = torch.stack(masks)
    return masks, torch.stack(patterns), masks.abs().sum((1, 2)).double(), epochs
