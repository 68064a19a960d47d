"""`.npz` files with arrays `x`, `y` (optionally `x_test`, `y_test`, `classes`), read without pickle."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from poisonguard.data.dataset import Splits
from poisonguard.data.folder import to_image_data
from poisonguard.errors import UserError


def load_npz(path: str | Path, *, seed: int = 0) -> Splits:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as arrays:
            data = {k: arrays[k] for k in arrays.files}
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"cannot read {path} as a pickle-free .npz: {exc}") from exc
    if "x" not in data or "y" not in data:
        raise UserError(f"{path} must hold arrays 'x' and 'y' (found {', '.join(sorted(data)) or 'none'})")
    if data["y"].size == 0:
        raise UserError(f"{path}: the data set is empty")
    classes = tuple(str(c) for c in data["classes"]) if "classes" in data else None
    if classes is None:
        top = max(int(np.max(data[k])) for k in ("y", "y_test") if k in data and data[k].size)
        classes = tuple(str(c) for c in range(top + 1))
    train = to_image_data(data["x"], data["y"], classes, f"{path}:x")
    if "x_test" in data and "y_test" in data:
        test = to_image_data(data["x_test"], data["y_test"], classes, f"{path}:x_test")
    else:
        from poisonguard.data.dataset import stratified_split

        tr, te = stratified_split(train.y.numpy(), 0.2, seed)
        train, test = train.subset(tr), train.subset(te)
    if train.input_shape != test.input_shape:
        raise UserError(f"{path}: train and test images differ in shape")
    return Splits(path.stem, train, test)
