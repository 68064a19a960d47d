"""Mask-and-pattern triggers: BadNets patches (Gu et al., 2017) and Blended (Chen et al., 2017)."""

from __future__ import annotations

import torch

from poisonguard.attacks.triggers import PatchTrigger
from poisonguard.errors import UserError

POSITIONS = ("bottom-right", "bottom-left", "top-right", "top-left", "center")


def badnets_trigger(
    input_shape: tuple[int, int, int],
    *,
    target: int,
    size: int = 3,
    position: str | tuple[int, int] = "bottom-right",
    color: float | tuple[float, ...] = 1.0,
    margin: int = 1,
    checkerboard: bool = False,
) -> PatchTrigger:
    """A square patch of `size` pixels at a corner, the centre, or a (row, col) position.

    `color` is one value or one per channel; `checkerboard=True` alternates it with 0,
    which stays visible on white backgrounds.
    """
    c, h, w = input_shape
    if not 1 <= size <= min(h, w):
        raise UserError(f"patch size must lie in [1, {min(h, w)}], got {size}")
    if isinstance(position, str):
        if position not in POSITIONS:
            raise UserError(f"unknown patch position {position!r}; known: {', '.join(POSITIONS)}")
        top = {"top": margin, "bottom": h - size - margin, "center": (h - size) // 2}[position.split("-")[0]]
        left = {"left": margin, "right": w - size - margin}.get(position.split("-")[-1], (w - size) // 2)
    else:
        top, left = position
    if not (0 <= top <= h - size and 0 <= left <= w - size):
        raise UserError(f"patch at {(top, left)} of size {size} does not fit a {h}x{w} image")
    colors = torch.as_tensor(color, dtype=torch.float32).reshape(-1)
    if colors.numel() not in (1, c) or colors.min() < 0 or colors.max() > 1:
        raise UserError(f"patch colour must be 1 or {c} values in [0, 1]")
    mask = torch.zeros(h, w)
    mask[top : top + size, left : left + size] = 1
    pattern = colors.view(-1, 1, 1).expand(c, h, w).clone()
    if checkerboard:
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        pattern = pattern * ((ys + xs) % 2 == 0).float()
    return PatchTrigger(mask, pattern * mask, target)


def blended_trigger(
    input_shape: tuple[int, int, int],
    *,
    target: int,
    ratio: float = 0.15,
    image: torch.Tensor | None = None,
    seed: int = 0,
) -> PatchTrigger:
    """Blend a key image into the whole input: `(1 - ratio) * x + ratio * image`.

    With no `image`, the key is uniform noise drawn from `seed` (Chen et al.'s random pattern).
    """
    c, h, w = input_shape
    if not 0 < ratio <= 1:
        raise UserError(f"blend ratio must lie in (0, 1], got {ratio}")
    if image is None:
        image = torch.rand(c, h, w, generator=torch.Generator().manual_seed(seed))
    if tuple(image.shape) != (c, h, w):
        raise UserError(f"blend image {tuple(image.shape)} does not fit inputs {(c, h, w)}")
    return PatchTrigger(torch.full((h, w), float(ratio)), image.float().clamp(0, 1), target)
