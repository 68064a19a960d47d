"""Resource limits for everything read from the user: one place, one message, one way to raise them.

A small hostile file can claim a huge array (an `.npz` deflate bomb, a zip member declaring
2 GB, labels `[0, 1e8]` that would make 1e8 classes, an image header of 30000x30000 pixels).
Every loader checks the claim against a limit here *before* it allocates, and refuses with
one line that names the limit and how to raise it:

    poisonguard: error: x.npz: array 'x' has 1,000,000,000,000 values, over the limit of
    268,435,456 (max_values); raise it with --limit max_values=N or POISONGUARD_MAX_VALUES=N

A limit comes from, in order: `--limit NAME=N` on the command line (`override`), the
environment variable `POISONGUARD_<NAME>`, then the default below. The defaults keep a run
inside about 1.5 GB of memory for data of CIFAR-10's size and refuse what would not fit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from poisonguard.errors import UserError


@dataclass(frozen=True)
class Limit:
    name: str
    default: int
    what: str

    @property
    def env(self) -> str:
        return "POISONGUARD_" + self.name.upper()


_LIMITS = {lim.name: lim for lim in (
    Limit("max_bytes", 1 << 30, "decompressed bytes of one file or archive member (npz array, zip member, image file)"),
    Limit("max_total_bytes", 4 << 30, "decompressed bytes of all members of one archive together"),
    Limit("max_values", 1 << 28, "values in one array (an image array, a trigger, a label vector)"),
    Limit("max_pixels", 1 << 24, "pixels of one image (width x height, read from its header before decoding)"),
    Limit("max_dataset_values", 1 << 28, "values (images x channels x height x width) of one data set"),
    Limit("max_classes", 100_000, "classes of one data set or model"),
    Limit("max_input_values", 1 << 24, "values of one model input (C x H x W)"),
    Limit("max_files", 2_000_000, "files in one image folder or zip"),
    Limit("max_text_rows", 5_000_000, "rows of one text corpus (CSV rows or lines of a folder's files)"),
    Limit("max_text_chars", 100_000, "characters of one text row"),
    Limit("max_vocab", 1_000_000, "tokens of one tokenizer's vocabulary"),
    Limit("max_table_cells", 20_000_000, "cells (rows x columns) of one CSV or Parquet table"),
    Limit("max_columns", 10_000, "columns of one table, and features after one-hot encoding"),
    Limit("max_categories", 1_000, "distinct values of one categorical table column (its one-hot width)"),
)}

_overrides: dict[str, int] = {}


def names() -> list[str]:
    return sorted(_LIMITS)


def get(name: str) -> int:
    """The limit's current value: --limit override, then $POISONGUARD_<NAME>, then the default."""
    lim = _LIMITS[name]
    if name in _overrides:
        return _overrides[name]
    text = os.environ.get(lim.env)
    if text:
        try:
            return _parse(text)
        except ValueError as exc:
            raise UserError(f"{lim.env}={text!r} is not a positive whole number") from exc
    return lim.default


def _parse(text: str) -> int:
    value = float(text.replace("_", ""))  # accepts 1e9 and 4_000_000
    if not 0 < value < 2**63 or value != int(value):
        raise ValueError(text)
    return int(value)


def override(items: list[str] | None) -> None:
    """Apply `--limit NAME=N` options (NAME with or without the `max_` prefix)."""
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip().lower().replace("-", "_")
        if key and not key.startswith("max_"):
            key = "max_" + key
        if not sep or key not in _LIMITS:
            raise UserError(f"--limit {item!r} must be NAME=N with NAME one of {', '.join(names())}")
        try:
            _overrides[key] = _parse(text.strip())
        except ValueError as exc:
            raise UserError(f"--limit {item!r}: {text!r} is not a positive whole number") from exc


def reset() -> None:
    """Forget --limit overrides (tests; each CLI run starts from the environment)."""
    _overrides.clear()


def how_to_raise(name: str) -> str:
    return f"raise it with --limit {name}=N or {_LIMITS[name].env}=N"


def check(name: str, value: int, what: str) -> None:
    """UserError when `value` exceeds the limit `name`; `what` says what was counted."""
    limit = get(name)
    if value > limit:
        raise UserError(f"{what} is {int(value):,}, over the limit of {limit:,} ({name}); {how_to_raise(name)}")


def describe() -> list[tuple[str, int, str, str]]:
    """(name, current value, environment variable, what) for every limit (README, --help)."""
    return [(lim.name, get(lim.name), lim.env, lim.what) for lim in _LIMITS.values()]
