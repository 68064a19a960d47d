"""Deep Partition Aggregation ensembles (Levine & Feizi, 2021): K base models, one per hash
partition, trained together and saved as one safe file.

Training: the K models share an architecture, so their parameters are stacked along a new
leading dimension and one `torch.func.functional_call` under `torch.vmap` runs all K
forward/backward passes at once (convolutions become one grouped convolution). Each model
still sees only its own partition: at every step model k gets a minibatch of B samples from
partition k, cycling through a fresh per-model permutation, so an "epoch" is
ceil(largest partition / B) steps. Adam acts elementwise, so one Adam over the stacked
tensors is K independent Adams; the per-model losses are summed, whose gradient with
respect to model k's slice is model k's own gradient. `batched=False` runs the identical
recipe one model after another; it is the default on CPU, where it measured faster.

Files: `model.safetensors` holds each parameter and buffer of the base architecture stacked
as (K, ...); `metadata.json` names the architecture, K, the hash and the classes. Nothing
is unpickled on load.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state

from poisonguard import __version__
from poisonguard.certify.partition import hash_name, hash_partition
from poisonguard.data import ImageData
from poisonguard.errors import UserError
from poisonguard.filesafety import require_safe
from poisonguard.models import ARCHITECTURES, build_model
from poisonguard.models.files import metadata_path, read_metadata
from poisonguard.utils import seeded, atomic_path, atomic_write_text, progress, resolve_device, sha256_file

log = logging.getLogger(__name__)

ENSEMBLE_FORMAT = "partition_ensemble"


class PartitionEnsemble(nn.Module):
    """K same-architecture base models evaluated together; forward returns vote counts.

    Args:
        base: one instance of the architecture (its own weights are not used).
        state: name -> (K, ...) stacked parameters and buffers of the K models.
        num_classes: classes the votes are counted over.
        chunk: images per vmapped pass (bounds memory: K copies of the activations).

    forward(x (N, C, H, W)) -> (N, num_classes) float vote counts summing to K; argmax of
    it is DPA's plurality vote with ties to the smaller class (torch.argmax takes the first).
    """

    def __init__(self, base: nn.Module, state: dict[str, torch.Tensor], num_classes: int, *, chunk: int = 64) -> None:
        super().__init__()
        self.base = [copy.deepcopy(base).eval()]  # a list keeps it out of state_dict and parameters
        self.names = sorted(state)
        self.k = int(next(iter(state.values())).shape[0])
        self.num_classes = int(num_classes)
        self.chunk = int(chunk)
        for i, name in enumerate(self.names):
            self.register_buffer(f"stacked_{i}", state[name].detach().clone())

    def stacked_state(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, f"stacked_{i}") for i, name in enumerate(self.names)}

    def _apply(self, fn, recurse=True):  # keep the skeleton on the same device as the weights
        self.base[0]._apply(fn)
        return super()._apply(fn, recurse)

    def base_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(K, N, classes) logits of every base model."""
        base = self.base[0]
        return torch.vmap(lambda s, xx: functional_call(base, s, (xx,)), in_dims=(0, None))(self.stacked_state(), x)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for start in range(0, len(x), self.chunk):
            pred = self.base_logits(x[start:start + self.chunk]).argmax(-1)  # (K, n)
            out.append(F.one_hot(pred, self.num_classes).sum(0).float())
        if not out:
            return x.new_zeros((0, self.num_classes))
        return torch.cat(out)


@dataclass(frozen=True)
class PartitionTraining:
    """The recipe for the K base models."""

    epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 5e-4
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise UserError("epochs and batch size must be at least 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"learning rate must be positive, got {self.lr}")


def partition_members(parts: torch.Tensor, k: int) -> list[torch.Tensor]:
    """Indices of the training samples in each of the k partitions."""
    return [torch.nonzero(parts == i).flatten() for i in range(k)]


def check_partitions(k: int, n: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise UserError(f"the number of partitions must be a positive integer, got {k}")
    if k > n:
        raise UserError(f"{k} partitions is more than the {n} training samples: every base model needs data")


def _schedule(idx: torch.Tensor, batch_size: int, epochs: int, seed: int, part: int) -> torch.Tensor:
    """(steps, B) sample indices of one partition: fresh permutations of it, from a generator of its
    own. Its steps (ceil(size / B) per epoch) and order depend on its own samples alone, which
    DPA's certificate assumes: a sample added to one partition changes only that base model."""
    if len(idx) == 0:
        return torch.zeros(0, batch_size, dtype=torch.int64)
    steps = math.ceil(len(idx) / batch_size) * epochs
    gen = torch.Generator().manual_seed(seed * 1_000_003 + part)
    need = steps * batch_size
    perms = [idx[torch.randperm(len(idx), generator=gen)] for _ in range(math.ceil(need / len(idx)))]
    return torch.cat(perms)[:need].view(steps, batch_size)


def train_partition_models(arch: str, data: ImageData, k: int, recipe: PartitionTraining | None = None, *,
                           batched: bool | None = None, parts: torch.Tensor | None = None) -> tuple[PartitionEnsemble, dict]:
    """Train DPA's K base models on the hash partitions of `data` (Levine & Feizi, 2021).

    Args:
        arch: registered architecture of every base model.
        data: the (possibly poisoned) training set, (N, C, H, W).
        k: number of partitions.
        recipe: epochs, batch size, Adam learning rate, seed, device.
        batched: train all K at once with vmap (True) or one after another (False). None picks
            vmap on CUDA, where K small models one by one leave the GPU idle, and the loop on
            CPU, where the vmapped grouped convolutions measured 2x slower (benchmarks/certify_dpa.py).
        parts: precomputed partition of each sample (default: hash_partition(data.x, k)).

    Returns:
        (the ensemble in eval mode on the CPU, info with partition sizes and seconds).
    """
    recipe = recipe or PartitionTraining()
    check_partitions(k, len(data))
    device = resolve_device(recipe.device)
    batched = device.type == "cuda" if batched is None else bool(batched)
    parts = hash_partition(data.x, k) if parts is None else parts
    members = partition_members(parts, k)
    sizes = [len(m) for m in members]
    if min(sizes) == 0:
        log.warning("%d of %d partitions are empty; their base models stay untrained", sizes.count(0), k)
    with seeded(recipe.seed):  # the K initialisations come from the recipe's seed, not the caller's RNG
        models = [build_model(arch, num_classes=data.num_classes, input_shape=data.input_shape) for _ in range(k)]
    schedules = [_schedule(m, recipe.batch_size, recipe.epochs, recipe.seed, i).to(device) for i, m in enumerate(members)]
    steps = [len(s) for s in schedules]
    x_all, y_all = data.x.to(device), data.y.to(device)
    start = time.perf_counter()
    if batched:
        state = _train_stacked(models, x_all, y_all, schedules, recipe, device)
    else:
        state = _train_one_by_one(models, x_all, y_all, schedules, recipe, device)
    seconds = time.perf_counter() - start
    base = build_model(arch, num_classes=data.num_classes, input_shape=data.input_shape)
    ensemble = PartitionEnsemble(base, {n: t.cpu() for n, t in state.items()}, data.num_classes).eval()
    info = {"partitions": k, "partition_sizes": sizes, "steps": max(steps), "seconds": round(seconds, 3),
            "batched": batched, "hash": hash_name(data.x), "epochs": recipe.epochs, "batch_size": recipe.batch_size,
            "lr": recipe.lr}
    return ensemble, info


def _cosine_lr(recipe: PartitionTraining, step: int, total: int) -> float:
    """The learning rate of `step` (from 0) of `total`: CosineAnnealingLR's, from lr to 0."""
    return recipe.lr * (1 + math.cos(math.pi * step / total)) / 2


def _train_stacked(models, x_all, y_all, schedules, recipe, device) -> dict[str, torch.Tensor]:
    """All K models at once (vmap), each for its own steps at its own cosine learning rate.

    Adam (L2 weight decay, as torch.optim.Adam) is written out so that each model's step size
    is its own: one shared optimiser would tie every model's schedule to the longest partition.
    A model whose steps are done is no longer changed.
    """
    params, buffers = stack_module_state([m.to(device) for m in models])
    base = copy.deepcopy(models[0]).to("meta")

    def loss_one(p, b, x, y):
        return F.cross_entropy(functional_call(base, (p, b), (x,)), y)

    vloss = torch.vmap(loss_one)
    steps = [len(s) for s in schedules]
    total = max(steps)
    batch = schedules[0].shape[1] if schedules else 1
    padded = torch.stack([torch.cat([s, torch.zeros(total - len(s), batch, dtype=torch.int64, device=device)])
                          for s in schedules], dim=1)  # (total, K, B)
    names = list(params)
    moments = {n: (torch.zeros_like(params[n]), torch.zeros_like(params[n])) for n in names}
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for step in progress(range(total), total=total, desc="train partitions"):
        active = torch.tensor([step < n for n in steps], device=device)
        lr = torch.tensor([_cosine_lr(recipe, step, n) if step < n else 0.0 for n in steps], device=device)
        # a finished model's forward pass (on padding) must not move its batch-norm statistics
        kept = {n: b.clone() for n, b in buffers.items()} if not active.all() else {}
        losses = vloss(params, buffers, x_all[padded[step]], y_all[padded[step]])  # (K,)
        for n, before in kept.items():
            buffers[n] = torch.where(_per_model(active, before), buffers[n], before)
        grads = torch.autograd.grad((losses * active).sum(), [params[n] for n in names])
        t = step + 1  # every model starts at step 0, so an active model has taken t steps
        with torch.no_grad():
            for n, g in zip(names, grads):
                p, (m, v) = params[n], moments[n]
                g = g + recipe.weight_decay * p
                keep = _per_model(active, p)
                m.copy_(torch.where(keep, beta1 * m + (1 - beta1) * g, m))
                v.copy_(torch.where(keep, beta2 * v + (1 - beta2) * g * g, v))
                update = (m / (1 - beta1 ** t)) / ((v / (1 - beta2 ** t)).sqrt() + eps)
                p.sub_(_per_model(lr, p) * update)
    return {**{n: t.detach() for n, t in params.items()}, **buffers}


def _per_model(values: torch.Tensor, stacked: torch.Tensor) -> torch.Tensor:
    """One value per model, (K,), shaped to broadcast over a stacked (K, ...) tensor."""
    return values.view((-1,) + (1,) * (stacked.dim() - 1))


def _train_one_by_one(models, x_all, y_all, schedules, recipe, device) -> dict[str, torch.Tensor]:
    for k, model in enumerate(progress(models, total=len(models), desc="train partitions")):
        schedule = schedules[k]
        model.to(device).train()
        if len(schedule):
            opt = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=len(schedule))
            for idx in schedule:
                loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        model.eval()
    params, buffers = stack_module_state(models)
    return {**{n: t.detach() for n, t in params.items()}, **buffers}


# ---------------------------------------------------------------- files

def save_ensemble(ensemble: PartitionEnsemble, path: str | Path, *, arch: str, classes: Sequence[str],
                  input_shape: Sequence[int], training: dict | None = None) -> dict:
    """Write `model.safetensors` (stacked base-model tensors) and `metadata.json` beside it."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise UserError(f"a partition ensemble is saved as .safetensors, not {path.name}")
    tensors = {name: t.detach().cpu().contiguous() for name, t in ensemble.stacked_state().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
    metadata = {"tool": "poisonguard", "version": __version__, "format": ENSEMBLE_FORMAT,
                "base_architecture": ARCHITECTURES.normalise(arch), "partitions": ensemble.k,
                "hash": (training or {}).get("hash", hash_name(torch.zeros(1, *input_shape))),
                "num_classes": len(classes), "classes": list(classes), "input_shape": [int(s) for s in input_shape],
                "sha256": sha256_file(path), "training": training or {}}
    atomic_write_text(path.parent / "metadata.json", json.dumps(metadata, indent=2))
    return metadata


def load_ensemble(path: str | Path) -> tuple[PartitionEnsemble, dict]:
    """Load a partition ensemble safely (safetensors + metadata.json); check shapes and hash."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file not found: {path}")
    meta_file = metadata_path(path)
    if not meta_file.is_file():
        raise UserError(f"{path}: no metadata.json beside it; a partition ensemble needs one")
    meta = read_metadata(path)  # as untrusted as the file: size, depth, classes and input shape bounded
    if meta.get("format") != ENSEMBLE_FORMAT:
        raise UserError(f"{path} is not a partition ensemble (train one with --defense partition)")
    digest = sha256_file(path)
    if meta.get("sha256") and meta["sha256"] != digest:
        raise UserError(f"{path} does not match the sha256 in {meta_file}: it was changed after saving")
    try:
        k, num_classes = int(meta["partitions"]), int(meta["num_classes"])
        shape = [int(s) for s in meta["input_shape"]]
        arch = str(meta["base_architecture"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{meta_file}: missing or bad field {exc}") from exc
    if k < 1 or len(shape) not in (1, 3) or min(shape) < 1:  # (C, H, W) images, (F,) table rows
        raise UserError(f"{meta_file}: bad partitions or input_shape")
    require_safe(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"cannot read safetensors file {path}: {exc}") from exc
    # the base architecture is compared with the file's tensors on the meta device first, so
    # the metadata's sizes cannot allocate more than the file holds
    with torch.device("meta"):
        skeleton = build_model(arch, num_classes=num_classes, input_shape=shape)
    expected = {**dict(skeleton.named_parameters()), **dict(skeleton.named_buffers())}
    if set(tensors) != set(expected):
        raise UserError(f"{path} does not hold the tensors of {k} {arch!r} models")
    for name, ref in expected.items():
        if tuple(tensors[name].shape) != (k, *ref.shape):
            raise UserError(f"{path}: tensor {name} has shape {tuple(tensors[name].shape)}, expected {(k, *ref.shape)}")
    base = build_model(arch, num_classes=num_classes, input_shape=shape)
    return PartitionEnsemble(base, tensors, num_classes).eval(), meta
