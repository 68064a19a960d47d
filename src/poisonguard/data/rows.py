"""A data source read as rows in its own order, for commands that judge every training sample.

`load_data` splits a source without a test part (an `.npz` with only `x`, a flat image
folder) at random, which suits training but not `sanitize`, whose positions must be the
file's own row numbers. `load_rows` keeps that order: the judged part is the training part
of a source that has a test part (`x` of an `.npz` with `x_test`, `train/` of a folder, the
train set of MNIST 5k and CIFAR-10) and every row of one that has none.

Positions of a folder or zip are the order in which the folder loader reads it: classes in
sorted order, files sorted by path within each class; `Rows.names` holds each row's path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from poisonguard.data.dataset import ImageData, from_uint8
from poisonguard.errors import UserError


@dataclass(frozen=True)
class Rows:
    """The judged samples (`train`, in source order), the test part if any, and where they came from.

    kind: "npz", "folder", "zip" or "builtin" (mnist5k, cifar10 and CIFAR archives).
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


def load_rows(spec: str, *, seed: int = 0) -> Rows:
    from poisonguard.data import load_data

    key = spec.strip().lower()
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".npz" and path.is_file():
        with np.load(path, allow_pickle=False) as probe:
            is_cifar = "train_jpeg" in probe.files
        if not is_cifar:
            return _npz_rows(path)
    if key not in ("mnist5k", "cifar10") and path.exists() and (path.is_dir() and not (path / "data_batch_1").is_file()
                                                                 or path.suffix.lower() == ".zip"):
        return _image_rows(path)
    splits = load_data(spec, seed=seed)
    return Rows(splits.name, "builtin", path if path.exists() else None, splits.train, splits.test)


def _npz_rows(path: Path) -> Rows:
    from poisonguard.data.folder import to_image_data

    try:
        with np.load(path, allow_pickle=False) as arrays:
            data = {k: arrays[k] for k in arrays.files}
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"cannot read {path} as a pickle-free .npz: {exc}") from exc
    if "x" not in data or "y" not in data:
        raise UserError(f"{path} must hold arrays 'x' and 'y' (found {', '.join(sorted(data)) or 'none'})")
    for key in ("y", "y_test"):
        if key in data and data[key].size and np.issubdtype(data[key].dtype, np.integer) and int(data[key].min()) < 0:
            raise UserError(f"{path}: labels in '{key}' must not be negative")
    classes = tuple(str(c) for c in data["classes"]) if "classes" in data else None
    if classes is None and data["y"].size and np.issubdtype(data["y"].dtype, np.integer):
        top = max(int(np.max(data[k])) for k in ("y", "y_test") if k in data and data[k].size)
        classes = tuple(str(c) for c in range(top + 1))
    train = _checked(to_image_data, data["x"], data["y"], classes, f"{path}:x")
    test = None
    if "x_test" in data and "y_test" in data:
        test = _checked(to_image_data, data["x_test"], data["y_test"], classes, f"{path}:x_test")
        if test.input_shape != train.input_shape:
            raise UserError(f"{path}: train and test images differ in shape")
    return Rows(path.stem, "npz", path, train, test)


def _checked(convert, x, y, classes, where) -> ImageData:
    if np.issubdtype(np.asarray(x).dtype, np.floating) and not np.isfinite(x).all():
        raise UserError(f"{where}: images contain NaN or Inf")
    return convert(x, y, classes, where)


def _image_rows(path: Path) -> Rows:
    import zipfile

    from poisonguard.data import folder

    if path.is_dir():
        names = [PurePosixPath(p.relative_to(path).as_posix()) for p in path.rglob("*") if p.is_file()]
        read = lambda p: (path / p).read_bytes()  # noqa: E731
        archive = None
    else:
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise UserError(f"cannot open zip {path}: {exc}") from exc
        infos = [i for i in archive.infolist() if not i.is_dir()]
        if len(infos) > folder.MAX_MEMBERS or sum(i.file_size for i in infos) > folder.MAX_UNCOMPRESSED:
            raise UserError(f"{path}: zip too large to load safely")
        names = [PurePosixPath(i.filename) for i in infos]
        read = lambda p: archive.read(str(p))  # noqa: E731
    try:
        tree = folder._group([p for p in names if p.suffix.lower() in folder.IMAGE_SUFFIXES])
        if not tree:
            raise UserError(f"{path}: no images in class sub-folders")
        classes = tuple(sorted({c for split in tree.values() for c in split}))

        def load(split):
            images, labels, rows = [], [], []
            for label, cls in enumerate(classes):
                for p in sorted(split.get(cls, [])):
                    images.append(folder._decode(read(p), str(p), None))
                    labels.append(label)
                    rows.append(str(p))
            if len({img.shape for img in images}) > 1:
                raise UserError(f"{path}: images differ in size; resize them to one size first")
            return from_uint8(np.stack(images), np.asarray(labels), classes), rows

        if "train" in tree and "test" in tree:
            train, rows = load(tree["train"])
            test, _ = load(tree["test"])
        else:
            train, rows = load(tree.get("all") or next(iter(tree.values())))
            test = None
    finally:
        if archive is not None:
            archive.close()
    return Rows(path.stem if path.is_file() else path.name, "zip" if archive is not None else "folder", path,
                train, test, tuple(rows))
