"""A data source read as rows in its own order, for commands that judge every training sample.

`load_data` splits a source without a test part (an `.npz` with only `x`, a flat image
folder) at random, which suits training but not `sanitize`, whose positions must be the
source's own row numbers. `load_rows` reads through the same hostile-input loaders and undoes
that split (it is a seeded function of the labels alone): the judged part is the training
part of a source that has a test part (`x` of an `.npz` with `x_test`, `train/` of a folder,
the train set of MNIST 5k and CIFAR-10) and every row of one that has none.

Positions of a folder or zip are the order in which the folder loader reads it: classes in
sorted order, files sorted by path within each class; `Rows.names` holds each row's path.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from poisonguard.data.dataset import UNLABELLED, ImageData, Splits, stratified_split
from poisonguard.errors import UserError

SPLIT_FRACTION = 0.2  # what the npz and folder loaders hold out when a source has no test part


@dataclass(frozen=True)
class Rows:
    """The judged samples (`train`, in source order), the test part if any, and where they came from.

    kind: "npz", "folder", "zip", "csv", "parquet" (tables) or "builtin" (mnist5k, cifar10 and CIFAR archives).
    """

    name: str
    kind: str
    path: Path | None
    train: ImageData
    test: ImageData | None
    names: tuple[str, ...] | None = None

    @property
    def classes(self) -> tuple[str, ...]:
        return self.train.classes


def _rejoin(splits: Splits, labels: np.ndarray, seed: int) -> ImageData:
    """Every row in source order, from a split the loader made with stratified_split(labels, 0.2, seed)."""
    tr, te = stratified_split(labels, SPLIT_FRACTION, seed)
    if len(tr) != len(splits.train) or len(te) != len(splits.test):
        raise UserError("cannot restore the source's row order (the loader's split changed)")
    x = torch.empty((len(labels), *splits.input_shape), dtype=splits.train.x.dtype)
    x[torch.as_tensor(tr)], x[torch.as_tensor(te)] = splits.train.x, splits.test.x
    y = torch.empty(len(labels), dtype=torch.long)
    y[torch.as_tensor(tr)], y[torch.as_tensor(te)] = splits.train.y, splits.test.y
    if not torch.equal(y, torch.as_tensor(labels, dtype=torch.long)):
        raise UserError("cannot restore the source's row order (labels do not match)")
    return splits.train.with_(x=x, y=y)


def load_rows(spec: str, *, seed: int = 0) -> Rows:
    from poisonguard.data import load_data

    key = spec.strip().lower()
    path = Path(spec).expanduser()
    splits = load_data(spec, seed=seed)  # every check of the hostile-input loaders happens here
    if key in ("mnist5k", "cifar10") or not path.exists():
        return Rows(splits.name, "builtin", None, splits.train, splits.test)
    if path.is_file() and path.suffix.lower() in (".csv", ".parquet"):
        from poisonguard.data import options, table

        # Every row is judged, in file order (feature ranges observed on all of them).
        whole = table.read_table(path, label_column=options.get("label_column"))
        return Rows(splits.name, path.suffix.lower()[1:], path, whole.with_(), None)
    if path.is_file() and path.suffix.lower() == ".npz":
        from poisonguard.data.cifar import is_cifar_archive

        if is_cifar_archive(path):
            return Rows(splits.name, "builtin", path, splits.train, splits.test)
        from poisonguard.data.npz import INTEGER, read_npz

        names = _npz_members(path)
        if "x_test" in names and "y_test" in names:
            return Rows(splits.name, "npz", path, splits.train, splits.test)
        labels = read_npz(path, kinds={"y": INTEGER})["y"]
        return Rows(splits.name, "npz", path, _rejoin(splits, labels, seed), None)
    if path.is_dir() and (path / "data_batch_1").is_file():
        return Rows(splits.name, "builtin", path, splits.train, splits.test)
    files = _image_files(path)
    tree = _group(files)
    classes = tuple(sorted({c for split in tree.values() for c in split}))
    if "train" in tree and "test" in tree:
        order = [str(p) for label, cls in enumerate(classes) for p in sorted(tree["train"].get(cls, []))]
        return Rows(splits.name, "zip" if path.is_file() else "folder", path, splits.train, splits.test, tuple(order))
    split = tree.get("all") or next(iter(tree.values()))
    order, labels = [], []
    for label, cls in enumerate(classes):
        for p in sorted(split.get(cls, [])):
            order.append(str(p))
            labels.append(label)
    return Rows(splits.name, "zip" if path.is_file() else "folder", path,
                _rejoin(splits, np.asarray(labels), seed), None, tuple(order))


def load_inputs(spec: str, *, seed: int = 0) -> Rows:
    """Inputs a model is to judge at run time (`filter --inputs`), whose labels may be unknown.

    A table (its label column, if any, left out: labels are never used, and a batch may be of
    one class or partly unlabelled), an `.npz` holding `x` but no `y` and a folder of images
    without class sub-folders are read in file (name) order with every label UNLABELLED and no
    class names; any other source is read as `load_rows` reads it.
    """
    path = Path(spec).expanduser()
    suffix = path.suffix.lower()
    if path.is_file() and suffix in (".csv", ".parquet"):
        from poisonguard.data import options, table

        whole = table.read_table(path, label_column=options.get("label_column"), labels_optional=True)
        return Rows(path.stem, suffix[1:], path, whole, None)
    elif path.is_file() and suffix == ".npz" and not {"y", "y_test"} & _npz_members(path):
        from poisonguard.data.folder import to_image_data
        from poisonguard.data.npz import read_npz

        data = read_npz(path, kinds={"x": "biuf"})
        if "x" not in data:
            raise UserError(f"{path} must hold an array 'x' (found {', '.join(sorted(data)) or 'none'})")
        images = to_image_data(data["x"], np.zeros(len(data["x"]), dtype=np.int64), ("?",), f"{path}:x")
        return Rows(path.stem, "npz", path, ImageData(images.x, torch.full((len(images),), UNLABELLED), ()), None)
    elif path.is_dir():
        flat = _flat_folder(path)
        if flat is not None:
            return flat
    return load_rows(spec, seed=seed)


def _flat_folder(path: Path) -> Rows | None:
    """A folder of images with no class sub-folders (inputs nobody has labelled), in name order;
    None when its images sit in sub-folders (then they are classes)."""
    from poisonguard import limits
    from poisonguard.data.dataset import from_uint8
    from poisonguard.data.folder import IMAGE_SUFFIXES, _stack, _walk, is_hidden
    from poisonguard.data.images import decode_image, read_file

    files = sorted(p for p in _walk(path) if p.suffix.lower() in IMAGE_SUFFIXES and not is_hidden(p))
    if not files or any(len(p.parts) > 1 for p in files):
        return None
    images, total = [], 0
    for p in files:
        images.append(decode_image(read_file(path / p, f"{path.name}/{p}"), f"{path.name}/{p}"))
        total += images[-1].size
        limits.check("max_dataset_values", total, f"{path.name}: the data set's value count (so far)")
    x = from_uint8(_stack(path.name, images), np.zeros(len(images), dtype=np.int64), ("?",)).x
    return Rows(path.name, "folder", path, ImageData(x, torch.full((len(x),), UNLABELLED), ()), None,
                tuple(str(p) for p in files))


def _npz_members(path: Path) -> set[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            return {n[:-4] if n.endswith(".npy") else n for n in archive.namelist()}
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UserError(f"cannot read {path} as an .npz: {exc}") from exc


def _group(files: list[PurePosixPath]):
    from poisonguard.data.folder import IMAGE_SUFFIXES, _group

    return _group([p for p in files if p.suffix.lower() in IMAGE_SUFFIXES])


def _image_files(path: Path) -> list[PurePosixPath]:
    """The same file list the folder and zip loaders read (they have already checked it)."""
    from poisonguard.data import folder

    if path.is_dir():
        return folder._walk(path)
    with zipfile.ZipFile(path) as archive:
        members = [folder._member_path(i.filename) for i in archive.infolist() if not i.is_dir()]
    return [m for m in members if m is not None]
