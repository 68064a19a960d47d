"""Writing a cleansed copy of a data source: the judged rows minus the flagged ones.

An `.npz` in gives `cleansed.npz` out with the same arrays: `x`, `y` without the flagged
rows, and every other array (the test part `x_test`/`y_test`, `classes`, ...) unchanged. Any
other source (an image folder or zip, MNIST 5k, CIFAR-10) gives an `.npz` with `x` (uint8,
N x C x H x W), `y`, `classes` and, when the source has one, its test part, readable by every
`--data` option (`poisonguard train --data DIR/cleansed.npz`). A table (.csv/.parquet) gives
the same kind of table without the flagged rows (`data.table.write_table_rows`). Writing is atomic; the input
is only ever read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from poisonguard.data.rows import Rows
from poisonguard.errors import UserError
from poisonguard.utils import atomic_path


def _uint8(x) -> np.ndarray:
    return np.clip(np.rint(x.numpy() * 255), 0, 255).astype(np.uint8)


def write_cleansed(rows: Rows, keep: np.ndarray, out: str | Path) -> Path:
    """Write the rows at positions `keep` (sorted, 0-based) to `out` (an .npz path); return it."""
    keep = np.asarray(keep, dtype=np.int64)
    if keep.size and (keep.min() < 0 or keep.max() >= len(rows.train)):
        raise UserError("positions to keep lie outside the data")
    out = Path(out)
    if rows.path is not None and out.resolve() == Path(rows.path).resolve():
        raise UserError(f"refusing to overwrite the input {rows.path}")
    if rows.kind == "table":
        from poisonguard.data.table import write_table_rows

        return write_table_rows(rows.path, keep, out)
    if rows.kind == "npz":
        from poisonguard.data.npz import read_npz

        data = read_npz(rows.path)  # the same checked reader the loader used
        data["x"], data["y"] = data["x"][keep], data["y"][keep]
    else:
        data = {"x": _uint8(rows.train.x[keep]), "y": rows.train.y.numpy()[keep],
                "classes": np.asarray(rows.classes)}
        if rows.test is not None:
            data["x_test"], data["y_test"] = _uint8(rows.test.x), rows.test.y.numpy()
        if rows.names is not None:
            data["names"] = np.asarray(rows.names)[keep]
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **data)
    return out
