"""Triggers and trigger files.

A `PatchTrigger` is a mask with the input's shape without the channel axis, in [0, 1], and a
pattern with the input's shape; the triggered input is `(1 - mask) * x + mask * pattern`
(BadNets, Blended, Tabdoor, and what `scan` reconstructs). For images the mask is (H, W) and
the pattern (C, H, W) in [0, 1]; for a feature vector (a table row, which has no channel
axis) both are (F,), the pattern in raw feature units.
A `WarpTrigger` is WaNet's warping field, which no mask can express.

Trigger files are `.npz` read with `allow_pickle=False`: `mask`, `pattern`, `target` (int64)
for a patch; `kind="wanet"`, `flow` (H, W, 2), `target` for a warp; `kind="generator"`,
two convolutions' weights, `budget`, `target` for a learned transformation (FeatureRE). A negative `target`
means all-to-all (label y goes to (y + 1) mod K). An optional `origin` says who wrote the file:
"attack" (the attack that planted it) or "reconstructed" (a scan); reports call a file without it
"given", since nothing says it is the attack's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from poisonguard.errors import UserError
from poisonguard.utils import atomic_path

ALL_TO_ALL = -1

# Who made a trigger: the attack that planted it, or a detector that reconstructed it. A trigger
# built in memory by an attack is the attack's; a detector marks its own. A file read without an
# origin has None: a hand-made file, or one older than the field.
ORIGINS = ("attack", "reconstructed")


def origin_field():
    return field(default="attack", compare=False)


def check_origin(origin) -> None:
    if origin is not None and origin not in ORIGINS:
        raise UserError(f"trigger origin must be one of {', '.join(ORIGINS)}, got {origin!r}")


def origin_arrays(trigger) -> dict[str, np.ndarray]:
    origin = getattr(trigger, "origin", None)
    return {} if origin is None else {"origin": np.asarray(origin)}


class Trigger(Protocol):
    target: int

    def apply(self, x: torch.Tensor) -> torch.Tensor: ...

    def to_arrays(self) -> dict[str, np.ndarray]: ...


def target_labels(trigger: Trigger, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The labels a triggered input should receive under the attack."""
    if trigger.target == ALL_TO_ALL:
        return (y + 1) % num_classes
    return torch.full_like(y, trigger.target)


def attack_eligible(trigger: Trigger, y: torch.Tensor) -> torch.Tensor:
    """Boolean mask of samples whose true label differs from the attack's target."""
    if trigger.target == ALL_TO_ALL:
        return torch.ones_like(y, dtype=torch.bool)
    return y != trigger.target


@dataclass(frozen=True)
class PatchTrigger:
    """Mask-and-pattern trigger: `(1 - mask) * x + mask * pattern`.

    Shapes: images mask (H, W), pattern (C, H, W), both in [0, 1]; feature vectors mask (F,)
    in [0, 1], pattern (F,) finite raw values.
    """

    mask: torch.Tensor
    pattern: torch.Tensor
    target: int
    origin: str | None = origin_field()

    def __post_init__(self) -> None:
        check_origin(self.origin)
        image = self.mask.ndim == 2 and self.pattern.ndim == 3 and self.pattern.shape[1:] == self.mask.shape
        vector = self.mask.ndim == 1 and self.pattern.ndim == 1 and self.pattern.shape == self.mask.shape
        if not (image or vector):
            raise UserError(f"trigger mask {tuple(self.mask.shape)} and pattern {tuple(self.pattern.shape)} do not fit "
                            "(images: (H, W) and (C, H, W); features: (F,) and (F,))")
        checks = (("mask", self.mask, True), ("pattern", self.pattern, image))
        for name, t, unit in checks:
            if unit and (not torch.isfinite(t).all() or t.min() < 0 or t.max() > 1):
                raise UserError(f"trigger {name} values must lie in [0, 1]")
            if not torch.isfinite(t).all():
                raise UserError(f"trigger {name} values must be finite")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.pattern.shape)

    @property
    def is_features(self) -> bool:
        """True for a feature-vector trigger (mask and pattern (F,), pattern in raw units)."""
        return self.pattern.ndim == 1

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        check_fits(self.input_shape, x)
        mask = self.mask.to(x.device, x.dtype)
        return (1 - mask) * x + mask * self.pattern.to(x.device, x.dtype)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "mask": self.mask.cpu().numpy().astype(np.float32),
            "pattern": self.pattern.cpu().numpy().astype(np.float32),
            "target": np.asarray(self.target, dtype=np.int64),
            **origin_arrays(self),
        }


@dataclass(frozen=True)
class WarpTrigger:
    """WaNet's warping trigger (Nguyen & Tran, 2021): resample x on identity grid + `flow`.

    `flow` (H, W, 2) is the fixed offset in grid_sample's [-1, 1] coordinates.
    """

    flow: torch.Tensor
    target: int
    origin: str | None = origin_field()

    def __post_init__(self) -> None:
        check_origin(self.origin)
        if self.flow.ndim != 3 or self.flow.shape[2] != 2 or not torch.isfinite(self.flow).all():
            raise UserError(f"warp flow must be a finite (H, W, 2) array, got {tuple(self.flow.shape)}")

    def grid(self, extra: torch.Tensor | None = None) -> torch.Tensor:
        h, w, _ = self.flow.shape
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        grid = torch.stack([xs, ys], dim=-1) + self.flow
        if extra is not None:
            grid = grid + extra
        return grid.clamp(-1, 1)

    def apply(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        h, w, _ = self.flow.shape
        if x.ndim != 4 or tuple(x.shape[2:]) != (h, w):
            raise UserError(f"warp trigger is for {h}x{w} images, data is {tuple(x.shape[1:])}")
        grid = self.grid(extra).to(x.device, x.dtype)  # (H, W, 2), or (N, H, W, 2) with extra
        if grid.ndim == 3:
            grid = grid.unsqueeze(0).expand(x.shape[0], -1, -1, -1)
        return F.grid_sample(x, grid, align_corners=True).clamp(0, 1)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "kind": np.asarray("wanet"),
            "flow": self.flow.cpu().numpy().astype(np.float32),
            "target": np.asarray(self.target, dtype=np.int64),
            **origin_arrays(self),
        }


# Widest generator a trigger file may hold. Applying it takes (images x width x H x W) values,
# so the width, not the file's size, sets the memory (FeatureRE writes width 8).
MAX_GENERATOR_WIDTH = 256


@dataclass(frozen=True)
class GeneratorTrigger:
    """An input transformation learned by a trigger inversion (FeatureRE in `scan`).

    x -> clamp(x + budget * tanh(conv2(relu(conv1(x)))), 0, 1): two 3x3 convolutions whose
    weights are plain arrays (w1 (h, C, 3, 3), b1 (h,), w2 (C, h, 3, 3), b2 (C,)), so the
    trigger file holds tensors only, never a pickled module. kind="generator".
    """

    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor
    budget: float
    target: int
    origin: str | None = origin_field()

    def __post_init__(self) -> None:
        check_origin(self.origin)
        ok = (self.w1.ndim == 4 and self.w2.ndim == 4 and self.w1.shape[1] == self.w2.shape[0]
              and self.w2.shape[1] == self.w1.shape[0] and self.b1.shape == self.w1.shape[:1]
              and self.b2.shape == self.w2.shape[:1] and self.w1.shape[2:] == (3, 3) and self.w2.shape[2:] == (3, 3))
        if not ok:
            raise UserError("generator trigger weights do not fit together (w1 (h, C, 3, 3), w2 (C, h, 3, 3))")
        if self.w1.shape[0] > MAX_GENERATOR_WIDTH:
            raise UserError(f"generator trigger is {self.w1.shape[0]} channels wide, over the limit of "
                            f"{MAX_GENERATOR_WIDTH}")
        if not all(torch.isfinite(t).all() for t in (self.w1, self.b1, self.w2, self.b2)):
            raise UserError("generator trigger weights must be finite")
        if not (0 < self.budget <= 1):
            raise UserError(f"generator trigger budget must lie in (0, 1], got {self.budget}")

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.w1.shape[1]:
            raise UserError(f"generator trigger is for {self.w1.shape[1]}-channel images, data is {tuple(x.shape[1:])}")
        w1, b1, w2, b2 = (t.to(x.device, x.dtype) for t in (self.w1, self.b1, self.w2, self.b2))
        h = F.relu(F.conv2d(x, w1, b1, padding=1))
        return (x + self.budget * torch.tanh(F.conv2d(h, w2, b2, padding=1))).clamp(0, 1)

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {k: getattr(self, k).detach().cpu().numpy().astype(np.float32) for k in ("w1", "b1", "w2", "b2")}
        return {"kind": np.array("generator"), **arrays, "budget": np.float32(self.budget),
                "target": np.int64(self.target), **origin_arrays(self)}


def check_fits(shape: tuple[int, ...], x: torch.Tensor) -> None:
    if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != tuple(shape):
        raise UserError(f"trigger is for inputs {tuple(shape)}, data is {tuple(x.shape[1:])}")


def save_trigger(trigger: Trigger, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **trigger.to_arrays())


def load_trigger(path: str | Path) -> Trigger:
    """Read a trigger file without unpickling anything; sizes, dtypes and shapes checked first."""
    from poisonguard.data.npz import INTEGER, TEXT, read_npz

    path = Path(path)
    if not path.is_file():
        raise UserError(f"trigger file {'is not a regular file' if path.exists() else 'not found'}: {path}")
    real = "biuf"  # bool, integer or float values; strings, objects, complex numbers are refused
    data = read_npz(path, kinds={"mask": real, "pattern": real, "flow": real, "target": INTEGER, "kind": TEXT,
                                 "origin": TEXT,
                                 **{k: real for k in ("w1", "b1", "w2", "b2", "budget")}},
                    what=f"trigger file {path}")
    if "target" not in data or data["target"].size != 1:
        raise UserError(f"{path}: trigger file needs an integer 'target'")
    target = int(data["target"].reshape(()))
    origin = str(data["origin"].reshape(-1)[0]) if "origin" in data and data["origin"].size == 1 else None
    if "origin" in data and origin not in ORIGINS:
        raise UserError(f"{path}: trigger origin must be one of {', '.join(ORIGINS)}")
    kind = str(data["kind"].reshape(-1)[0]) if "kind" in data and data["kind"].size else "patch"
    if kind == "wanet":
        if "flow" not in data:
            raise UserError(f"{path}: a wanet trigger needs 'flow'")
        if data["flow"].size == 0:
            raise UserError(f"{path}: the warp flow is empty")
        return WarpTrigger(torch.from_numpy(data["flow"].astype(np.float32)), target, origin)
    if kind == "generator":
        missing = [k for k in ("w1", "b1", "w2", "b2", "budget") if k not in data]
        if missing:
            raise UserError(f"{path}: a generator trigger needs {', '.join(missing)}")
        weights = {k: torch.from_numpy(data[k].astype(np.float32)) for k in ("w1", "b1", "w2", "b2")}
        if data["budget"].size != 1:
            raise UserError(f"{path}: a generator trigger's budget is one number")
        return GeneratorTrigger(**weights, budget=float(data["budget"].reshape(())), target=target, origin=origin)
    if kind != "patch":
        raise UserError(f"{path}: unknown trigger kind {kind!r} (known: patch, wanet, generator)")
    if "mask" not in data or "pattern" not in data:
        raise UserError(f"{path}: trigger file needs 'mask' and 'pattern'")
    mask, pattern = data["mask"].astype(np.float32), data["pattern"].astype(np.float32)
    if mask.ndim == 3 and mask.shape[0] == 1:
        mask = mask[0]
    if not ((mask.ndim == 2 and pattern.ndim == 3) or (mask.ndim == 1 and pattern.ndim == 1)):
        raise UserError(f"{path}: trigger mask must be (H, W) and pattern (C, H, W) for images, or both (F,) for "
                        f"features; got {mask.shape} and {pattern.shape}")
    if mask.size == 0 or pattern.size == 0:
        raise UserError(f"{path}: the trigger mask or pattern is empty")
    return PatchTrigger(torch.from_numpy(mask), torch.from_numpy(pattern), target, origin)


def check_trigger_fits(trigger: Trigger, input_shape: tuple[int, ...], num_classes: int) -> None:
    """UserError unless the trigger matches the data's input shape and class count."""
    if isinstance(trigger, (WarpTrigger, GeneratorTrigger)) and len(input_shape) != 3:
        raise UserError(f"a {type(trigger).__name__} is for images, the data's inputs are {tuple(input_shape)}")
    if isinstance(trigger, PatchTrigger) and trigger.input_shape != tuple(input_shape):
        raise UserError(f"trigger is for inputs {trigger.input_shape}, data is {tuple(input_shape)}")
    if isinstance(trigger, WarpTrigger) and tuple(trigger.flow.shape[:2]) != tuple(input_shape[1:]):
        raise UserError(f"warp trigger is for {tuple(trigger.flow.shape[:2])} images, data is {tuple(input_shape)}")
    if isinstance(trigger, GeneratorTrigger) and trigger.w1.shape[1] != input_shape[0]:
        raise UserError(f"generator trigger is for {trigger.w1.shape[1]}-channel images, data is {tuple(input_shape)}")
    if trigger.target >= num_classes or trigger.target < ALL_TO_ALL:
        raise UserError(f"trigger target {trigger.target} is not a class of this {num_classes}-class data")
