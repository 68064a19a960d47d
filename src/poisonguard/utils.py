"""Small shared helpers: seeding, device choice, progress bars, atomic file writes, hashing,
NAME=VALUE options."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, TypeVar

import torch

from poisonguard.errors import UserError

T = TypeVar("T")

# Set by the CLI's --quiet; progress bars also stay off when stderr is not a terminal.
QUIET = False


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[torch.Generator]:
    """Run a block with torch's global RNG seeded, and restore the caller's RNG state after it.

    Yields a CPU generator seeded the same way for every random choice the block makes
    itself; the global seed only covers what cannot take a generator (dropout, weight
    initialisation inside third-party code). The caller's random streams are left as they were.
    """
    if not 0 <= int(seed) < 2**63:
        raise UserError(f"seed must lie in [0, 2**63), got {seed}")
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield torch.Generator().manual_seed(seed)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`"auto"` picks CUDA when present, else CPU; anything else is passed to torch."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise UserError(f"unknown device {device!r}") from exc
    if dev.type not in ("cpu", "cuda", "mps"):  # e.g. 'meta' holds no data: every model would fail later
        raise UserError(f"device {device!r} cannot run a model; use auto, cpu, cuda or mps")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("device 'mps' asked for but it is not available")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' asked for but no CUDA GPU is available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"device {device!r} asked for but there are {torch.cuda.device_count()} CUDA GPU(s)")
    return dev


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer (CPU for a model with neither)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


def progress(items: Iterable[T], *, total: int | None = None, desc: str = "") -> Iterator[T]:
    """A tqdm bar on an interactive terminal; the plain iterable otherwise."""
    if QUIET or not sys.stderr.isatty():
        yield from items
        return
    from tqdm.auto import tqdm

    yield from tqdm(items, total=total, desc=desc, leave=False)


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    Readers never see a half-written file, and a failure leaves any old file untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def batches(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices covering range(n)."""
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def _value(text: str) -> Any:
    low = text.strip().lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_options(items: list[str] | None) -> dict[str, Any]:
    """`["m=5", "sigma=0.01"]` -> {"m": 5, "sigma": 0.01}."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"option {item!r} must look like NAME=VALUE")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = _value(value)
    return out


def check_option_types(given: dict[str, Any], params: dict[str, Any], what: str) -> None:
    """UserError when a NAME=VALUE option's value does not fit its parameter (`m=abc` where m is
    `int | None`; `sigma=nan`). `params` maps names to `inspect.Parameter`s; the annotation
    (also as a string) and the default's type say what fits; untyped parameters take anything."""
    import inspect
    import math
    import re

    for key, value in given.items():
        p = params.get(key)
        if p is None:
            continue
        ann = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", str(p.annotation))
        tokens = set(re.findall(r"[A-Za-z_]+", ann)) if p.annotation is not inspect.Parameter.empty else set()
        if p.default is not inspect.Parameter.empty and p.default is not None:
            tokens.add(type(p.default).__name__)
        numeric = {"bool", "int", "float"} & tokens
        if not numeric or tokens - {"bool", "int", "float", "None", "Optional"}:
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"{what} {key}={value!r}: must be finite")
            continue  # str, tuples, anything else: the method checks it
        if value is None:
            ok = "None" in tokens or p.default is None
        elif isinstance(value, bool):
            ok = "bool" in numeric
        elif isinstance(value, int):
            ok = bool({"int", "float"} & numeric)
        elif isinstance(value, float):
            ok = "float" in numeric and math.isfinite(value)
        else:
            ok = False
        if not ok:
            want = " or ".join(sorted(numeric | ({"None"} & tokens)))
            raise UserError(f"{what} {key}={value!r}: must be {want} (default {p.default!r})")
