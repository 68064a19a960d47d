"""The noise stream of randomized smoothing, defined so results do not depend on batching.

Each (example index, phase) pair gets its own generator, seeded from (seed, index, phase)
by splitmix64, and draws its Gaussian noise in blocks of `NOISE_BLOCK` samples (Cohen et
al.'s batch size). The batched certifier and the plain reference loop therefore see the
very same noise for the same seed, whatever batch size, device chunking or --max-examples
is used, which is what lets the benchmark show identical radii side by side.
"""

from __future__ import annotations

from typing import Iterator

import torch

NOISE_BLOCK = 400
PHASE_SELECT, PHASE_ESTIMATE, PHASE_PREDICT = 0, 1, 2
_MASK64 = (1 << 64) - 1


def splitmix64(value: int) -> int:
    """One splitmix64 step: decorrelates nearby integers before they seed a generator."""
    z = (value + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def stream_seed(seed: int, index: int, phase: int) -> int:
    """A 63-bit generator seed for one example's draws in one phase."""
    return splitmix64(splitmix64(splitmix64(seed & _MASK64) ^ index) ^ phase) >> 1


def stream_generator(*, seed: int, index: int, phase: int, device: torch.device) -> torch.Generator:
    """The generator of one example's draws in one phase."""
    return torch.Generator(device=device).manual_seed(stream_seed(seed, index, phase))


def block_sizes(num: int) -> Iterator[int]:
    """Sizes of the successive noise blocks for `num` draws: NOISE_BLOCK, ..., remainder."""
    for start in range(0, num, NOISE_BLOCK):
        yield min(NOISE_BLOCK, num - start)


def noise_blocks(shape: tuple[int, ...], num: int, *, seed: int, index: int, phase: int,
                 device: torch.device) -> Iterator[torch.Tensor]:
    """Yield standard-normal noise (b, *shape) block by block, num draws in all."""
    gen = stream_generator(seed=seed, index=index, phase=phase, device=device)
    for b in block_sizes(num):
        yield torch.randn((b, *shape), generator=gen, device=device)
