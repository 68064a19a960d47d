"""The batched trigger-inversion engine shared by Neural Cleanse and TABOR.

For a set of candidate target classes it optimises one mask (H, W) and one pattern
(C, H, W) per class *at once*: every step stamps each class's trigger on the same clean
mini-batch and sends all classes x images through the model in one forward pass. The
objective, parametrisation and per-class cost schedule are those of Neural Cleanse
(Wang et al., 2019): mask and pattern live in tanh space, Adam (lr 0.1, betas 0.5/0.9),
loss = CE(f((1 - m) x + m p), t) + cost_t * ||m||_1, the cost of each class raised after
`patience` epochs of attack success >= 99% and lowered after `patience` epochs below it,
the smallest successful mask kept, and early stop once the best mask stops shrinking.

Adam is element-wise, so running the classes side by side is exactly the same algorithm
as running them one at a time (benchmarks/detect_sequential_reference.py does that) - only
faster. Classes that stop early leave the batch; classes are processed in chunks bounded
by memory so 100+ class models fit; `prune_after` optionally drops the classes that are
furthest from a small trigger early (the K-Arm observation that a full scan is wasteful).

Feature vectors (N, F) (tables) are searched in the box of each feature's observed range
instead of [0, 1]: the engine maps each feature to [0, 1] by its (low, high), runs the same
algorithm on (N, 1, 1, F) "images" through a model that maps back to raw units
(`UnitBox`), and returns masks (K, F) and patterns (K, F) in raw units, so every pattern
value lies within [low, high] and the mask L1 counts features.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from poisonguard.errors import UserError
from poisonguard.utils import batches, progress

log = logging.getLogger(__name__)

# extra_loss(model, x (B,C,H,W), y (B,), masks (k,H,W), patterns (k,C,H,W), targets (k,)) -> (k,)
ExtraLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

_EPS = 1e-7


@dataclass(frozen=True)
class InversionConfig:
    """Hyperparameters of the inversion (keyword-only, checked on construction).

    `epochs` is an upper bound; an epoch is `steps_per_epoch` mini-batches (default: one
    pass over the clean images, but at least `min_samples_per_epoch` images, drawn again
    where the set is smaller). Patience values count epochs, as in Neural Cleanse; the
    defaults are scaled down from NC's (5 / 25 over up to 1000 epochs) to short epochs
    on a small clean set.

    Why a floor: NC's own code draws a fixed 1,000 samples per epoch from the clean set,
    whatever its size. One pass over 40 clean images (1% of MNIST 5k) is 2 mini-batches, so
    the 40 epochs gave the optimiser 80 steps and masks were still shrinking when the budget
    ended. The floor of 200 (7 batches of 32) is the size of the 5% MNIST set, whose figures
    it therefore leaves as they were. On the tuning models at 1% it raised the target's
    index on 6 of 7 backdoored models (the filter trigger 2.9 -> 8.6, the blend 4.6 -> 8.7),
    while the largest index of the 3 clean models went 2.0 / 3.0 / 2.3 -> 2.2 / 2.9 / 2.8
    (benchmarks/results/issue-16.md, session 10).
    """

    epochs: int = 40
    batch_size: int = 32
    steps_per_epoch: int | None = None
    min_samples_per_epoch: int = 200
    lr: float = 0.1
    betas: tuple[float, float] = (0.5, 0.9)
    init_cost: float = 1e-3
    cost_multiplier: float = 2.0
    patience: int = 3
    attack_threshold: float = 0.99
    early_stop: bool = True
    early_stop_threshold: float = 0.99
    early_stop_patience: int = 10
    chunk_classes: int | None = None
    max_memory_mb: float = 1024.0
    prune_after: int | None = None
    prune_keep: float = 0.3
    start_cost_at_zero: bool = False

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "patience", "early_stop_patience", "min_samples_per_epoch"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("steps_per_epoch", "chunk_classes", "prune_after"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise ValueError(f"{name} must be at least 1 or None, got {value}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not all(0 <= b < 1 for b in self.betas) or len(self.betas) != 2:
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not self.init_cost >= 0:
            raise ValueError(f"init_cost must be non-negative, got {self.init_cost}")
        if not self.cost_multiplier > 1:
            raise ValueError(f"cost_multiplier must exceed 1, got {self.cost_multiplier}")
        if not 0 < self.attack_threshold <= 1:
            raise ValueError(f"attack_threshold must lie in (0, 1], got {self.attack_threshold}")
        if not 0 < self.early_stop_threshold <= 1:
            raise ValueError(f"early_stop_threshold must lie in (0, 1], got {self.early_stop_threshold}")
        if not self.max_memory_mb > 0:
            raise ValueError(f"max_memory_mb must be positive, got {self.max_memory_mb}")
        if not 0 < self.prune_keep <= 1:
            raise ValueError(f"prune_keep must lie in (0, 1], got {self.prune_keep}")


@dataclass(frozen=True)
class Inversion:
    """Per-class outcome of the inversion, K = number of candidate classes.

    masks (K, H, W) and patterns (K, C, H, W) in [0, 1]; mask_l1 (K,); attack_success (K,)
    on all clean images; found (K,) whether a mask reached the attack threshold; epochs (K,)
    run; pruned (K,) dropped early by `prune_after` (their size is an upper bound).
    """

    targets: tuple[int, ...]
    masks: torch.Tensor
    patterns: torch.Tensor
    mask_l1: torch.Tensor
    attack_success: torch.Tensor
    found: torch.Tensor
    epochs: torch.Tensor
    pruned: torch.Tensor
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class CostSchedule:
    """Neural Cleanse's per-class cost schedule (Wang et al., 2019, the authors' `visualizer.py`).

    All fields are (k,) tensors, one entry per class being inverted. Each epoch, given
    whether the class's trigger reached the attack threshold:
      - cost-set: while the cost is 0 and the attack succeeds, count; after `patience`
        such epochs set the cost to `init_cost` and reset every counter and flag (NC starts
        at cost 0 with `reset_cost_to_zero`, so the mask is free until a trigger works);
      - up/down: `patience` successes in a row multiply the cost by `multiplier`,
        `patience` failures in a row divide it by `multiplier ** 1.5`; each sets its flag
        (early stopping waits for both flags).
    `step` is pure: it returns a new schedule and never changes this one.
    """

    cost: torch.Tensor
    set_count: torch.Tensor
    up_count: torch.Tensor
    down_count: torch.Tensor
    up_flag: torch.Tensor
    down_flag: torch.Tensor

    @classmethod
    def start(cls, k: int, cost: float) -> "CostSchedule":
        zeros = torch.zeros(k, dtype=torch.long)
        no = torch.zeros(k, dtype=torch.bool)
        return cls(torch.full((k,), float(cost), dtype=torch.float64), zeros, zeros.clone(), zeros.clone(), no, no.clone())

    def step(self, rows: torch.Tensor, success: torch.Tensor, *, init_cost: float, multiplier: float,
             patience: int) -> "CostSchedule":
        """One epoch's update of classes `rows` (indices, (a,)) given their `success` ((a,) bool)."""
        f = {name: getattr(self, name).clone() for name in
             ("cost", "set_count", "up_count", "down_count", "up_flag", "down_flag")}
        cost = f["cost"][rows]
        at_zero = (cost == 0) & success
        set_count = torch.where(at_zero, f["set_count"][rows] + 1, 0)
        do_set = set_count >= patience
        f["set_count"][rows] = torch.where(do_set, 0, set_count)
        cost = torch.where(do_set, torch.full_like(cost, float(init_cost)), cost)
        up = torch.where(do_set, 0, f["up_count"][rows])
        down = torch.where(do_set, 0, f["down_count"][rows])
        up_flag = f["up_flag"][rows] & ~do_set
        down_flag = f["down_flag"][rows] & ~do_set
        # NC counts successes and failures in a row on every epoch, the cost-set epoch included.
        up = torch.where(success, up + 1, 0)
        down = torch.where(success, 0, down + 1)
        go_up = up >= patience
        go_down = ~go_up & (down >= patience)
        cost = torch.where(go_up, cost * multiplier, torch.where(go_down, cost / multiplier ** 1.5, cost))
        f["cost"][rows] = cost
        f["up_count"][rows] = torch.where(go_up, 0, up)
        f["down_count"][rows] = torch.where(go_down, 0, down)
        f["up_flag"][rows] = up_flag | go_up
        f["down_flag"][rows] = down_flag | go_down
        return CostSchedule(**f)


def frozen_copy(model: nn.Module, device: torch.device, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """An eval-mode copy of `model` on `device` with gradients off (the caller's model is untouched).

    Through the model handle: a ScriptModule's deepcopy has non-leaf parameters and an exported
    module refuses eval(), so each kind is copied the way it supports. `input_shape` lets an
    image model take the faster channels-last layout (`models.layout`).
    """
    from poisonguard.models.handle import frozen_copy as handle_frozen_copy

    return handle_frozen_copy(model, device, input_shape)


def to_tanh_space(v: torch.Tensor) -> torch.Tensor:
    """Inverse of (tanh(w) + 1) / 2, kept finite at 0 and 1."""
    return torch.atanh((v - 0.5) * (2 - 1e-4))


def from_tanh_space(w: torch.Tensor) -> torch.Tensor:
    return (torch.tanh(w) + 1) / 2


def initial_trigger(target: int, shape: tuple[int, int, int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """NC's random initial mask (1, H, W) and pattern (C, H, W), seeded per class.

    Seeding by (seed, class) makes a class's run independent of which classes share its chunk.
    """
    c, h, w = shape
    gen = torch.Generator().manual_seed(seed * 100_003 + int(target))
    return torch.rand(1, h, w, generator=gen), torch.rand(c, h, w, generator=gen)


def epoch_order(n: int, epoch: int, seed: int, steps: int, batch_size: int) -> list[torch.Tensor]:
    """The image indices of each mini-batch of one epoch, the same for every class."""
    gen = torch.Generator().manual_seed(seed * 7_919 + epoch)
    need = steps * batch_size
    order = torch.cat([torch.randperm(n, generator=gen) for _ in range(math.ceil(need / n))])
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(steps)]


def stamp(x: torch.Tensor, masks: torch.Tensor, patterns: torch.Tensor) -> torch.Tensor:
    """All triggers on all images: x (B, C, H, W), masks (k, H, W), patterns (k, C, H, W) -> (k*B, C, H, W)."""
    m = masks.unsqueeze(1).unsqueeze(2)  # (k, 1, 1, H, W)
    out = (1 - m) * x.unsqueeze(0) + (m * patterns.unsqueeze(1))
    return out.reshape(-1, *x.shape[1:])


def _activation_bytes(model: nn.Module, shape: tuple[int, int, int], device: torch.device) -> int:
    """Bytes of activations one input keeps for backward (summed module outputs, a rough bound)."""
    total = [0]

    def hook(_module, _inp, out):
        if isinstance(out, torch.Tensor):
            total[0] += out.numel() * out.element_size()

    from poisonguard.models.handle import supports_hooks

    handles = []
    for module in model.modules() if supports_hooks(model) else ():  # ScriptModules take no hooks: use the floor below
        if not list(module.children()):
            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(torch.zeros(1, *shape, device=device))
    except Exception:
        total[0] = 0
    finally:
        for h in handles:
            h.remove()
    return max(total[0], 4 * int(torch.tensor(shape).prod()))


def chunk_size(model: nn.Module, shape: tuple[int, int, int], config: InversionConfig, device: torch.device, n_classes: int) -> int:
    """How many classes fit one forward pass within the memory budget (at least 1)."""
    if config.chunk_classes is not None:
        return min(config.chunk_classes, n_classes)
    budget = config.max_memory_mb * 2**20
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = max(budget, 0.5 * free)
    per_class = 3 * config.batch_size * _activation_bytes(model, shape, device)
    return int(max(1, min(n_classes, budget // max(per_class, 1))))


def _attack_success(model, x, masks, patterns, targets, batch_size=256) -> torch.Tensor:
    """(k,) share of all clean images sent to each class's target by its trigger."""
    hits = torch.zeros(len(targets))
    with torch.no_grad():
        for sl in batches(len(x), max(1, batch_size // max(1, len(targets)))):
            xb = x[sl]
            pred = model(stamp(xb, masks, patterns)).argmax(1).view(len(targets), -1)
            hits += (pred == targets.view(-1, 1)).float().sum(1).cpu()
    return hits / len(x)


def _invert_chunk(model, x, y, targets: torch.Tensor, config: InversionConfig, extra_loss: ExtraLoss | None,
                  seed: int, device: torch.device) -> dict[str, torch.Tensor]:
    k = len(targets)
    shape = tuple(x.shape[1:])
    inits = [initial_trigger(int(t), shape, seed) for t in targets]
    mask_w = to_tanh_space(torch.stack([m for m, _ in inits])).to(device)       # (k, 1, H, W)
    pattern_w = to_tanh_space(torch.stack([p for _, p in inits])).to(device)    # (k, C, H, W)
    params = [mask_w, pattern_w]
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    b1, b2 = config.betas
    steps = config.steps_per_epoch or math.ceil(max(len(x), config.min_samples_per_epoch) / config.batch_size)
    tgt = targets.to(device)

    # Per-class schedule state (CPU, shape (k,)), exactly NC's counters.
    schedule = CostSchedule.start(k, 0.0 if config.start_cost_at_zero else config.init_cost)
    reg_best = torch.full((k,), math.inf, dtype=torch.float64)
    es_best = torch.full((k,), math.inf, dtype=torch.float64)
    es_count = torch.zeros(k, dtype=torch.long)
    best_mask = from_tanh_space(mask_w).detach().clone()
    best_pattern = from_tanh_space(pattern_w).detach().clone()
    epochs_run = torch.zeros(k, dtype=torch.long)
    active = torch.ones(k, dtype=torch.bool)
    pruned = torch.zeros(k, dtype=torch.bool)
    t_adam = 0

    for epoch in range(config.epochs):
        act = torch.nonzero(active).flatten()
        if len(act) == 0:
            break
        act_dev = act.to(device)
        acc_sum = torch.zeros(len(act), dtype=torch.float64)
        reg_sum = torch.zeros(len(act), dtype=torch.float64)
        for idx in epoch_order(len(x), epoch, seed, steps, config.batch_size):
            xb, yb = x[idx.to(x.device)], y[idx.to(y.device)]
            leaves = [p[act_dev].detach().requires_grad_(True) for p in params]
            masks = from_tanh_space(leaves[0])      # (a, 1, H, W)
            patterns = from_tanh_space(leaves[1])   # (a, C, H, W)
            logits = model(stamp(xb, masks[:, 0], patterns))
            t_rep = tgt[act_dev].repeat_interleave(len(xb))
            ce = F.cross_entropy(logits, t_rep, reduction="none").view(len(act), -1).mean(1)
            acc = (logits.argmax(1) == t_rep).float().view(len(act), -1).mean(1)
            reg = masks.abs().sum((1, 2, 3))
            loss = ce + schedule.cost[act].to(device, ce.dtype) * reg
            if extra_loss is not None:
                loss = loss + extra_loss(model, xb, yb, masks[:, 0], patterns, tgt[act_dev])
            grads = torch.autograd.grad(loss.sum(), leaves)
            # Adam on the active rows only (element-wise, so identical to one optimiser per class).
            t_adam += 1
            for p, (m1, m2), g in zip(params, moments, grads):
                m1[act_dev] = b1 * m1[act_dev] + (1 - b1) * g
                m2[act_dev] = b2 * m2[act_dev] + (1 - b2) * g * g
                m_hat = m1[act_dev] / (1 - b1 ** t_adam)
                v_hat = m2[act_dev] / (1 - b2 ** t_adam)
                p[act_dev] = p[act_dev] - config.lr * m_hat / (v_hat.sqrt() + 1e-8)
            acc_sum += acc.detach().double().cpu()
            reg_sum += reg.detach().double().cpu()
        epochs_run[act] += 1
        avg_acc, avg_reg = acc_sum / steps, reg_sum / steps
        success = avg_acc >= config.attack_threshold

        # Keep the smallest successful trigger (NC stores the mask at the end of the epoch).
        improved = success & (avg_reg < reg_best[act])
        if improved.any():
            rows = act[improved]
            best_mask[rows.to(device)] = from_tanh_space(mask_w[rows.to(device)]).detach()
            best_pattern[rows.to(device)] = from_tanh_space(pattern_w[rows.to(device)]).detach()
            reg_best[rows] = avg_reg[improved]

        # Early stop: the best mask has not shrunk by (1 - threshold) for `early_stop_patience` epochs.
        has_best = torch.isfinite(reg_best[act])
        stalled = reg_best[act] >= config.early_stop_threshold * es_best[act]
        es_count[act] = torch.where(has_best, torch.where(stalled, es_count[act] + 1, 0), es_count[act])
        es_best[act] = torch.where(has_best, torch.minimum(es_best[act], reg_best[act]), es_best[act])
        if config.early_stop:
            stop = schedule.up_flag[act] & schedule.down_flag[act] & (es_count[act] >= config.early_stop_patience)
            active[act[stop]] = False

        schedule = schedule.step(act, success, init_cost=config.init_cost, multiplier=config.cost_multiplier,
                                 patience=config.patience)

        if config.prune_after is not None and epoch + 1 == config.prune_after:
            # Rank by the best successful mask size, else the current size plus a large offset.
            score = torch.where(torch.isfinite(reg_best), reg_best, avg_reg.new_zeros(k).index_put_((act,), avg_reg) + 1e9)
            keep = max(1, math.ceil(config.prune_keep * k))
            drop = torch.argsort(score, stable=True)[keep:]
            pruned[drop] = active[drop]
            active[drop] = False

    found = torch.isfinite(reg_best)
    # A class that never reached the threshold reports its final mask.
    final_mask, final_pattern = from_tanh_space(mask_w).detach(), from_tanh_space(pattern_w).detach()
    fd = found.to(device)
    masks = torch.where(fd.view(-1, 1, 1, 1), best_mask, final_mask)[:, 0]
    patterns = torch.where(fd.view(-1, 1, 1, 1), best_pattern, final_pattern)
    return {"masks": masks, "patterns": patterns, "found": found, "epochs": epochs_run, "pruned": pruned,
            "cost": schedule.cost}


class UnitBox(nn.Module):
    """A feature-vector model seen through the unit box: (N, 1, 1, F) in [0, 1] -> model(low + z * (high - low))."""

    def __init__(self, model: nn.Module, low: torch.Tensor, high: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("low", low.reshape(1, -1).float())
        self.register_buffer("span", (high - low).reshape(1, -1).float())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(self.low + z.reshape(z.shape[0], -1) * self.span)


def to_unit_box(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Feature vectors (N, F) -> (N, 1, 1, F) in [0, 1] by each feature's range (constant features -> 0)."""
    span = (high - low).to(x)
    z = (x - low.to(x)) / torch.where(span > 0, span, torch.ones_like(span))
    return z.clamp(0, 1).reshape(len(x), 1, 1, -1)


def _invert_features(model, x, y, bounds, **kw) -> Inversion:
    """`invert_triggers` for feature vectors: the same algorithm in the unit box of `bounds`."""
    low, high = bounds if bounds is not None else (x.min(0).values, x.max(0).values)
    low, high = low.reshape(-1).float().cpu(), high.reshape(-1).float().cpu()
    if low.numel() != x.shape[1] or high.numel() != x.shape[1] or (low > high).any():
        raise UserError(f"feature bounds must be {x.shape[1]} values with low <= high")
    device = torch.device(kw["device"])
    inv = invert_triggers(UnitBox(model, low, high).to(device), to_unit_box(x.cpu(), low, high), y, **kw)
    f = x.shape[1]
    masks = inv.masks.reshape(len(inv.targets), f)
    patterns = low + inv.patterns.reshape(len(inv.targets), f) * (high - low)
    return replace(inv, masks=masks, patterns=patterns, mask_l1=masks.abs().sum(1).double(),
                   extra={**inv.extra, "space": "feature ranges"})


def invert_triggers(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    targets: list[int] | None = None,
    num_classes: int,
    config: InversionConfig | None = None,
    extra_loss: ExtraLoss | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Inversion:
    """Reverse-engineer the smallest trigger that sends clean inputs to each target class.

    Args:
        model: a frozen classifier (see `frozen_copy`) taking (N, C, H, W) inputs in [0, 1],
            or feature vectors (N, F) in raw units.
        x: clean images (N, C, H, W) or feature vectors (N, F); y: their labels (N,) (model
            predictions if None).
        targets: candidate target classes (default all `num_classes`).
        config: hyperparameters; extra_loss: per-class extra terms (TABOR's regularisers).
        bounds: for feature vectors, each feature's (low, high) (F,) the trigger must stay
            in (`data.input_bounds`); default the range of `x`. Ignored for images ([0, 1]).
    Returns:
        An `Inversion` with masks (K, H, W), patterns (K, C, H, W) and sizes (K,); for
        feature vectors masks (K, F) and patterns (K, F) in raw units.
    """
    config = config or InversionConfig()
    device = torch.device(device)
    if len(x) == 0:
        raise UserError("trigger inversion needs at least one clean image")
    if x.ndim == 2:
        return _invert_features(model, x, y, bounds, targets=targets, num_classes=num_classes, config=config,
                                extra_loss=extra_loss, seed=seed, device=device)
    x = x.to(device)
    if y is None:
        with torch.no_grad():
            y = torch.cat([model(x[sl]).argmax(1) for sl in batches(len(x), 512)])
    y = y.to(device)
    targets = list(range(num_classes)) if targets is None else [int(t) for t in targets]
    shape = tuple(int(s) for s in x.shape[1:])
    size = chunk_size(model, shape, config, device, len(targets))
    parts = []
    chunks = [targets[i:i + size] for i in range(0, len(targets), size)]
    for chunk in progress(chunks, total=len(chunks), desc="invert"):
        t = torch.tensor(chunk, dtype=torch.long)
        out = _invert_chunk(model, x, y, t, config, extra_loss, seed, device)
        out["attack_success"] = _attack_success(model, x, out["masks"], out["patterns"], t.to(device))
        parts.append(out)
    cat = {key: torch.cat([p[key].cpu() if key not in ("masks", "patterns") else p[key].cpu() for p in parts])
           for key in parts[0]}
    return Inversion(
        targets=tuple(targets), masks=cat["masks"], patterns=cat["patterns"],
        mask_l1=cat["masks"].abs().sum((1, 2)).double(), attack_success=cat["attack_success"],
        found=cat["found"], epochs=cat["epochs"], pruned=cat["pruned"],
        extra={"chunk_classes": size, "final_cost": cat["cost"]},
    )
