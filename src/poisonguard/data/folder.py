"""Image folders (one sub-folder per class, as torchvision's ImageFolder) and `.zip` files of one.

Both are hostile input. A zip is read in memory, never extracted, so member names cannot
write anywhere; each member's declared size, encryption flag and compression method are
checked before it is read, reads are capped, and CRCs are checked. A folder is walked
without following symlinks out of it (they are skipped with a warning, e.g. one to
/proc/self/mem). Image headers are checked against `limits.max_pixels` before decoding,
and the data set's total size against `limits.max_dataset_values` as it is decoded.
"""

from __future__ import annotations

import logging
import os
import stat
import zipfile
from collections import defaultdict
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np

from poisonguard import limits
from poisonguard.data.dataset import ImageData, Splits, from_uint8, readable_names, stratified_split
from poisonguard.data.images import decode_image, read_file
from poisonguard.data.npz import check_member
from poisonguard.errors import UserError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
RAW_PIXEL_SUFFIXES = {".bmp", ".tif", ".tiff"}  # may hold uncompressed pixels (`_check_ratio`)
# Split folders as data sets name them (Kaggle's Train/ and Testing/, Keras' validation/), matched
# without regard to case. Read as class folders, a val/ became a class "val" and Train/ + Test/
# a two-class problem.
SPLIT_FOLDERS = {"train": "train", "training": "train", "test": "test", "testing": "test",
                 "val": "val", "valid": "val", "validation": "val"}


def split_of(name: str) -> str | None:
    """The split a folder name stands for ("train", "test", "val"), or None for a class folder."""
    return SPLIT_FOLDERS.get(name.lower())


def is_hidden(path: PurePosixPath) -> bool:
    """A dot file or folder, or macOS's zip metadata (`__MACOSX/`, `._name`): never data."""
    return any(part.startswith(".") or part == "__MACOSX" for part in path.parts)


def _wrapper_depth(paths: list[PurePosixPath]) -> int:
    """How many leading folders every path shares above the class (or train/test) folders: a
    zip often wraps its class folders in one folder named after the data set."""
    depth = 0
    while paths and all(len(p.parts) > depth + 2 for p in paths) and len({p.parts[depth] for p in paths}) == 1 \
            and split_of(paths[0].parts[depth]) is None:
        depth += 1
    return depth


def _group(paths: list[PurePosixPath]) -> dict[str, dict[str, list[PurePosixPath]]]:
    """{split: {class: [paths]}}; split is "all" unless a train/test/val level exists (`SPLIT_FOLDERS`).

    The class is the top folder (below train/ or test/, and below a folder that wraps them
    all), as torchvision's ImageFolder: images in sub-folders of a class folder (cat/2019/x.png)
    belong to that class. Files at the top level and hidden files are not data.

    Top folders are splits only where one of them is train/ (or training/), or all of them are
    split names: a class named Test or valid beside a class Control or invalid stays a class.
    """
    tree: dict[str, dict[str, list[PurePosixPath]]] = defaultdict(lambda: defaultdict(list))
    paths = [p for p in paths if not is_hidden(p)]
    depth = _wrapper_depth(paths)
    tops = {p.parts[depth] for p in paths if len(p.parts) > depth + 1}
    split_level = any(split_of(t) == "train" for t in tops) or all(split_of(t) for t in tops)
    for p in paths:
        parts = p.parts[depth:]
        if split_level and len(parts) >= 3 and split_of(parts[0]) is not None:
            tree[split_of(parts[0])][parts[1]].append(p)
        elif len(parts) >= 2:
            tree["all"][parts[0]].append(p)
    return tree


def _build(
    name: str,
    paths: list[PurePosixPath],
    read: Callable[[PurePosixPath], bytes],
    image_size: tuple[int, int] | None,
    seed: int,
) -> Splits:
    tree = _choose_splits(name, _group([p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES]))
    if not tree:
        raise UserError(f"{name}: no images in class sub-folders")
    classes = tuple(sorted({c for split in tree.values() for c in split}))
    for split, held in tree.items():
        lacking = [c for c in classes if c not in held]
        if split != "all" and lacking:  # a class the model never trains on, or one never tested
            log.warning("%s: %s/ holds no images of class(es) %s", name, split, ", ".join(lacking[:5]))
    limits.check("max_classes", len(classes), f"{name}: the number of class folders")
    total = [0]

    def load(split: dict[str, list[PurePosixPath]]) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for label, cls in enumerate(classes):
            for p in sorted(split.get(cls, [])):
                image = decode_image(read(p), f"{name}/{p}", size=image_size)
                total[0] += image.size
                limits.check("max_dataset_values", total[0], f"{name}: the data set's value count (so far)")
                images.append(image)
                labels.append(label)
        if not images:
            raise UserError(f"{name}: a split holds no images")
        return images, np.asarray(labels)

    named = readable_names(classes, name)
    if "train" in tree and "test" in tree:
        (xtr, ytr), (xte, yte) = load(tree["train"]), load(tree["test"])
        both = _stack(name, xtr + xte)  # together: train and test must agree in shape
        xtr, xte = both[: len(xtr)], both[len(xtr):]
        return Splits(name, from_uint8(xtr, ytr, named), from_uint8(xte, yte, named))
    images, y = load(tree.get("all") or next(iter(tree.values())))
    x = _stack(name, images)
    tr, te = stratified_split(y, 0.2, seed)
    return Splits(name, from_uint8(x[tr], y[tr], named), from_uint8(x[te], y[te], named))


def _choose_splits(name: str, tree: dict) -> dict:
    """The parts the data set is read from: train/ and test/; a val/ stands in for a missing
    test/ and is left out beside one; images outside the split folders are left out beside them.
    Each choice that leaves images out says so."""
    if "train" not in tree:
        parts = [s for s in ("test", "val") if s in tree]
        if not parts:
            return tree
        used = "all" if "all" in tree else parts[0]
        left = [f"{s}/" for s in parts if s != used]
        log.warning("%s: no train/ folder; %s split 80/20%s", name,
                    "the class folders are" if used == "all" else f"{used}/ is",
                    f" ({', '.join(left)} left out)" if left else "")
        return {"all": tree[used]}
    if "test" not in tree and "val" in tree:
        log.warning("%s: no test/ folder; val/ is used as the test part", name)
        tree["test"] = tree.pop("val")
    left = [f"{s}/" if s != "all" else "class folders beside train/" for s in sorted(tree) if s not in ("train", "test")]
    if left:
        log.warning("%s: %s left out (poisonguard reads train/ and test/)", name, ", ".join(left))
    return {s: tree[s] for s in ("train", "test") if s in tree} if "test" in tree else {"all": tree["train"]}


def _stack(name: str, images: list[np.ndarray]) -> np.ndarray:
    """One (N, C, H, W) array; grey images join colour ones as RGB (a folder of photos often
    holds a few grey JPEGs). Different sizes are refused: resizing is the user's choice."""
    if len({img.shape[0] for img in images}) > 1:
        images = [np.repeat(img, 3, axis=0) if img.shape[0] == 1 else img for img in images]
    shapes = sorted({img.shape[1:] for img in images})
    if len(shapes) > 1:
        raise UserError(f"{name}: images differ in size (height x width {', '.join(f'{h}x{w}' for h, w in shapes[:3])}"
                        f"{' ...' if len(shapes) > 3 else ''}); resize them to one size first")
    return np.stack(images)


def _walk(root: Path) -> list[PurePosixPath]:
    """Regular files under `root`, relative; symlinks are followed only when they stay inside."""
    real_root = root.resolve()
    files, skipped = [], []
    for folder, dirs, names in os.walk(root, followlinks=False):
        here = Path(folder)
        for d in list(dirs):
            if (here / d).is_symlink():  # never descend a linked folder (loops, places outside)
                skipped.append(str((here / d).relative_to(root)))
                dirs.remove(d)
        for n in names:
            p = here / n
            if not regular_file_inside(p, real_root):
                skipped.append(str(p.relative_to(root)))
                continue
            files.append(PurePosixPath(p.relative_to(root).as_posix()))
            limits.check("max_files", len(files), f"{root}: the number of files")
    warn_skipped(root, skipped)
    return files


def regular_file_inside(path: Path, real_root: Path) -> bool:
    """A regular file, and where `path` is a link, one that resolves inside `real_root` (a link to
    /etc/passwd named x.png or x.txt must not become data, nor be copied into our outputs)."""
    if path.is_symlink():
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError):  # dangling, or a loop
            return False
        if not target.is_relative_to(real_root):
            return False
    try:
        return stat.S_ISREG(path.stat().st_mode)  # fifos, devices: reading could block or never end
    except OSError:
        return False


def warn_skipped(root: Path, skipped: list[str]) -> None:
    if skipped:
        log.warning("%s: skipped %d symlink(s) or special file(s) that lead out of the folder or are not regular "
                    "files: %s", root, len(skipped), ", ".join(sorted(skipped)[:5]) + (" ..." if len(skipped) > 5 else ""))


def load_image_folder(root: str | Path, *, image_size: tuple[int, int] | None = None, seed: int = 0) -> Splits:
    root = Path(root)
    paths = _walk(root)
    splits = _build(root.name, paths, lambda p: read_file(root / p, f"{root.name}/{p}"), image_size, seed)
    if _wrapper_depth([p for p in paths if not is_hidden(p)]) == 0:
        _warn_empty_class_folders(root, splits.classes)
    return splits


def _warn_empty_class_folders(root: Path, classes: tuple[str, ...]) -> None:
    """A class folder without images is no class, so the classes after it shift down by one
    index; say so, since a model trained before it emptied would read its outputs wrongly."""
    tops = [d for d in root.iterdir() if d.is_dir() and not d.is_symlink() and split_of(d.name)] or [root]
    empty = sorted({d.name for top in tops for d in top.iterdir()
                    if d.is_dir() and not d.is_symlink()  # a skipped link was warned about already
                    and not is_hidden(PurePosixPath(d.name)) and d.name not in classes
                    and not (top == root and split_of(d.name))})
    if empty:
        log.warning("%s: folder(s) %s hold no images and are not classes; the classes are %s", root,
                    ", ".join(empty[:5]), ", ".join(classes[:10]))


def _member_path(name: str) -> PurePosixPath | None:
    """The member's path with empty and "." parts dropped ("1/./x.png" and "1//x.png" are "1/x.png");
    None for a folder. Names are only labels here (nothing is extracted), so ".." cannot escape."""
    if "\\" in name and "/" not in name:  # old Windows tools separate with backslashes
        name = name.replace("\\", "/")
    if name.endswith("/"):
        return None
    parts = [part for part in name.split("/") if part not in ("", ".")]
    return PurePosixPath(*parts) if parts else None


def load_image_zip(path: str | Path, *, image_size: tuple[int, int] | None = None, seed: int = 0) -> Splits:
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UserError(f"cannot open zip {path}: {exc}") from exc
    with archive:
        members: dict[PurePosixPath, zipfile.ZipInfo] = {}
        for info in archive.infolist():
            member = _member_path(info.filename)
            if member is None or info.is_dir():
                continue
            if member in members:
                raise UserError(f"{path}: two members are both named {str(member)!r}")
            members[member] = info
        limits.check("max_files", len(members), f"{path}: the number of members")
        images = [m for m in members if m.suffix.lower() in IMAGE_SUFFIXES and not is_hidden(m)]
        limits.check("max_total_bytes", sum(members[m].file_size for m in images),
                     f"{path}: the declared size of all images together")
        for m in images:  # refuse before decoding anything
            check_member(members[m], f"{path}:{m}")
            _check_ratio(members[m], f"{path}:{m}")

        def read(member: PurePosixPath) -> bytes:
            cap = limits.get("max_bytes")
            try:
                with archive.open(members[member]) as stream:
                    blob = stream.read(cap + 1)  # reading to the end makes zipfile check the CRC
            except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError) as exc:
                raise UserError(f"cannot read {path}:{member}: {exc}") from exc
            limits.check("max_bytes", len(blob), f"{path}:{member}: the member's size in bytes")
            return blob

        return _build(path.stem, list(members), read, image_size, seed)


def _check_ratio(info: zipfile.ZipInfo, what: str) -> None:
    """An image member that inflates far beyond its stored size is a decompression bomb: PNG,
    JPEG, GIF and WebP compress their own pixels, and a PNG followed by 800 MiB of zeros (837 KB
    in the zip) took 1.5 GB to read, as Pillow ignores what follows the image. The model files'
    limits. BMP and TIFF may hold raw pixels, which a sparse drawing deflates 500x: they are
    bounded by `max_bytes` alone."""
    from poisonguard.filesafety.limits import LIMITS

    if info.compress_type != zipfile.ZIP_STORED and info.file_size > LIMITS.ratio_floor \
            and PurePosixPath(info.filename).suffix.lower() not in RAW_PIXEL_SUFFIXES:
        ratio = info.file_size / max(1, info.compress_size)
        if ratio > LIMITS.zip_ratio:
            raise UserError(f"{what}: decompresses {ratio:.0f}x ({info.file_size} bytes from {info.compress_size}), "
                            f"over the ratio limit of {LIMITS.zip_ratio} (a decompression bomb)")


def to_image_data(x: np.ndarray, y: np.ndarray, classes: tuple[str, ...] | None, where: str) -> ImageData:
    """Accept (N, H, W), (N, H, W, C) or (N, C, H, W); integers 0-255, floats in [0, 1] or booleans."""
    from poisonguard.data.npz import INTEGER, check_dtype

    x, y = np.asarray(x), np.asarray(y)
    check_dtype(x.dtype, f"{where} (images)", "biuf")
    check_dtype(y.dtype, f"{where} (labels)", INTEGER)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise UserError(f"{where}: images must be 3- or 4-dimensional, got shape {x.shape}")
    # (N, H, W, C): a few channels last, more pixels second (grey + alpha and RGBA included)
    if x.shape[-1] <= 4 and (x.shape[1] > 4 or (x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4))):
        x = x.transpose(0, 3, 1, 2)
    if y.ndim != 1:
        raise UserError(f"{where}: labels must be a 1-d integer array, got shape {y.shape}")
    if len(x) == 0:
        raise UserError(f"{where}: the data set is empty")
    limits.check("max_dataset_values", x.size, f"{where}: the data set's value count")
    if len(y) != len(x):
        raise UserError(f"{where}: {len(x)} images but {len(y)} labels")
    low, high = int(y.min()), int(y.max())
    if low < 0:
        raise UserError(f"{where}: labels must be class indices from 0, found {low}")
    if classes is not None and high >= len(classes):
        raise UserError(f"{where}: label {high} has no class name ('classes' names {len(classes)})")
    if classes is None:  # checked before 1e8 class names are made for labels [0, 1e8]
        limits.check("max_classes", high + 1, f"{where}: the number of classes (largest label + 1)")
        classes = tuple(str(c) for c in range(high + 1))
    if x.dtype.kind in "iu":
        if int(x.min()) < 0 or int(x.max()) > 255:
            raise UserError(f"{where}: integer images must lie in [0, 255]")
        return from_uint8(x.astype(np.uint8, copy=False), y, classes)
    import torch

    xf = x.astype(np.float32, copy=False)
    if not np.isfinite(xf).all() or xf.min() < 0 or xf.max() > 1:
        raise UserError(f"{where}: float images must be finite and lie in [0, 1]")
    return ImageData(torch.from_numpy(np.ascontiguousarray(xf)), torch.from_numpy(y.astype(np.int64)), classes)
