"""Writing a cleansed copy of a data source: the judged rows minus the flagged ones.

An `.npz` in gives `cleansed.npz` out with the same arrays: `x`, `y` without the flagged
rows, and every other array (the test part `x_test`/`y_test`, `classes`, ...) unchanged. Any
other source (an image folder or zip, MNIST 5k, CIFAR-10) gives an `.npz` with `x` (uint8,
N x C x H x W), `y`, `classes` and, when the source has one, its test part, readable by every
`--data` option (`poisonguard train --data DIR/cleansed.npz`). Writing is atomic; the input
is only ever read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from poisonguard.data.rows import Rows
from poisonguard.errors import UserError
from poisonguard.utils import atomic_path


def _uint8(x) -> np.ndarray:
    return np.clip(np.rint(x.numpy() * 255), 0, 255).astype(np.uint8)


# Writers of a cleansed copy in the input's own format, by `Rows.kind`: (suffix, writer(rows,
# keep, path)). Kinds without one get an .npz of images. This is the hook for CSV in, CSV out:
# tabular data support (issue 19) registers WRITERS["csv"] = (".csv", its writer) beside a
# `load_rows` that returns kind "csv"; `cleansed_path` and the commands then follow.
WRITERS: dict[str, tuple[str, Callable[[Rows, np.ndarray, Path], None]]] = {}


def _table_writer(rows: Rows, keep: np.ndarray, path: Path) -> None:
    """A table in, the same table out: the source's rows at `keep`, every cell as it was (data.table)."""
    from poisonguard.data.table import write_table_rows

    write_table_rows(rows.path, keep, path, suffix=Path(rows.path).suffix.lower())


WRITERS["csv"] = (".csv", _table_writer)
WRITERS["parquet"] = (".parquet", _table_writer)


def cleansed_path(rows: Rows, folder: str | Path, stem: str = "cleansed") -> Path:
    """Where the cleansed copy of `rows` goes in `folder`: `stem` + the suffix of its format."""
    return Path(folder) / (stem + WRITERS.get(rows.kind, (".npz", None))[0])


def write_cleansed(rows: Rows, keep: np.ndarray, out: str | Path) -> Path:
    """Write the rows at positions `keep` (sorted, 0-based) to `out` (from `cleansed_path`); return it."""
    keep = np.asarray(keep, dtype=np.int64)
    if keep.size and (keep.min() < 0 or keep.max() >= len(rows.train)):
        raise UserError("positions to keep lie outside the data")
    out = Path(out)
    if rows.path is not None and out.resolve() == Path(rows.path).resolve():
        raise UserError(f"refusing to overwrite the input {rows.path}")
    if rows.kind in WRITERS:
        with atomic_path(out) as tmp:
            WRITERS[rows.kind][1](rows, keep, Path(tmp))
        return out
    if rows.kind == "npz":
        from poisonguard.data.npz import read_npz

        data = read_npz(rows.path)  # the same checked reader the loader used
        for name in ("x", "y"):  # run-time inputs (`filter`) may come without labels
            if name in data:
                data[name] = data[name][keep]
    else:
        data = {"x": _uint8(rows.train.x[keep])}
        if rows.classes:  # run-time inputs (`filter`) may come without labels
            data.update(y=rows.train.y.numpy()[keep], classes=np.asarray(rows.classes))
        if rows.test is not None:
            data["x_test"], data["y_test"] = _uint8(rows.test.x), rows.test.y.numpy()
        if rows.names is not None:
            data["names"] = np.asarray(rows.names)[keep]
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **data)
    return out
