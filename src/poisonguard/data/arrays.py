"""`.npz` files with arrays `x`, `y` (optionally `x_test`, `y_test`, `classes`), read without pickle.

Read through `data.npz.read_npz`: sizes and dtypes are checked before any array is allocated.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from poisonguard import limits
from poisonguard.data.dataset import Splits
from poisonguard.data.folder import to_image_data
from poisonguard.data.npz import INTEGER, NUMERIC, TEXT, read_npz
from poisonguard.errors import UserError

log = logging.getLogger(__name__)

_KINDS = {"x": "biuf", "x_test": "biuf", "y": INTEGER, "y_test": INTEGER, "classes": TEXT + NUMERIC}


def load_npz(path: str | Path, *, seed: int = 0) -> Splits:
    path = Path(path)
    data = read_npz(path, kinds=_KINDS)
    if "x" not in data or "y" not in data:
        raise UserError(f"{path} must hold arrays 'x' and 'y' (found {', '.join(sorted(data)) or 'none'})")
    if data["y"].size == 0:
        raise UserError(f"{path}: the data set is empty")
    if "classes" in data:
        if data["classes"].ndim != 1:
            raise UserError(f"{path}: 'classes' must be a 1-d array of names")
        limits.check("max_classes", len(data["classes"]), f"{path}: the number of class names")
        classes = tuple(str(c) for c in data["classes"])
        if len(set(classes)) != len(classes):  # two outputs one name: reports and --target would mix them
            repeated = next(c for c in classes if classes.count(c) > 1)
            raise UserError(f"{path}: class name {repeated!r} appears more than once in 'classes'")
    else:
        labels = [data[k] for k in ("y", "y_test") if k in data and data[k].size]
        if any(y.ndim != 1 for y in labels):
            raise UserError(f"{path}: labels must be 1-d integer arrays")
        if min(int(y.min()) for y in labels) < 0:
            raise UserError(f"{path}: labels must be class indices from 0")
        top = max(int(y.max()) for y in labels)
        limits.check("max_classes", top + 1, f"{path}: the number of classes (largest label + 1)")
        classes = tuple(str(c) for c in range(top + 1))
    if ("x_test" in data) != ("y_test" in data):  # one without the other was silently ignored
        raise UserError(f"{path}: 'x_test' and 'y_test' come together (found only "
                        f"{'x_test' if 'x_test' in data else 'y_test'})")
    if "x_test" in data:  # both parts together, before either becomes float32
        limits.check("max_dataset_values", data["x"].size + data["x_test"].size, f"{path}: the data set's value count")
    train = to_image_data(data["x"], data["y"], classes, f"{path}:x")
    if "x_test" in data and "y_test" in data:
        test = to_image_data(data["x_test"], data["y_test"], classes, f"{path}:x_test")
    else:
        from poisonguard.data.dataset import stratified_split

        tr, te = stratified_split(train.y.numpy(), 0.2, seed)
        train, test = train.subset(tr), train.subset(te)
    if train.input_shape != test.input_shape:
        raise UserError(f"{path}: train and test images differ in shape")
    _warn_empty_classes(path, train)
    return Splits(path.stem, train, test)


def _warn_empty_classes(path: Path, train) -> None:
    """Labels are class indices, so labels {3, 7} make 8 classes, 6 of them without an image: the
    model gets outputs no image trains, and a --target or a scan's finding can name one. Say so."""
    counts = np.bincount(train.y.numpy(), minlength=len(train.classes))
    empty = [train.classes[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        log.warning("%s: %d of %d classes have no training image (%s%s); labels are class indices from 0, so "
                    "renumber them if these are no classes", path, len(empty), len(train.classes),
                    ", ".join(empty[:5]), " ..." if len(empty) > 5 else "")
