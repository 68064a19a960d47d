"""Image folders (one sub-folder per class, as torchvision's ImageFolder) and `.zip` files of one.

A zip is read in memory, never extracted, so hostile member names cannot write anywhere;
member count and total uncompressed size are capped against zip bombs.
"""

from __future__ import annotations

import io
import zipfile
from collections import defaultdict
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np

from poisonguard.data.dataset import ImageData, Splits, from_uint8, stratified_split
from poisonguard.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
MAX_MEMBERS = 2_000_000
MAX_UNCOMPRESSED = 8 << 30
MAX_PIXELS = 4096 * 4096


def _decode(blob: bytes, name: str, size: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with Image.open(io.BytesIO(blob)) as img:
            img = img.convert("RGB") if img.mode not in ("L", "RGB") else img.copy()
            if size is not None and img.size != size:
                img = img.resize(size, Image.BILINEAR)
            arr = np.asarray(img)
    except Exception as exc:  # Pillow raises many types for corrupt files
        raise UserError(f"cannot decode image {name}: {exc}") from exc
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _group(paths: list[PurePosixPath]) -> dict[str, dict[str, list[PurePosixPath]]]:
    """{split: {class: [paths]}}; split is "all" unless a train/test level exists."""
    tree: dict[str, dict[str, list[PurePosixPath]]] = defaultdict(lambda: defaultdict(list))
    for p in paths:
        parts = p.parts
        if len(parts) >= 3 and parts[-3] in ("train", "test"):
            tree[parts[-3]][parts[-2]].append(p)
        elif len(parts) >= 2:
            tree["all"][parts[-2]].append(p)
    return tree


def _build(
    name: str,
    paths: list[PurePosixPath],
    read: Callable[[PurePosixPath], bytes],
    image_size: tuple[int, int] | None,
    seed: int,
) -> Splits:
    tree = _group([p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES])
    if not tree:
        raise UserError(f"{name}: no images in class sub-folders")
    classes = tuple(sorted({c for split in tree.values() for c in split}))

    def load(split: dict[str, list[PurePosixPath]]) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for label, cls in enumerate(classes):
            for p in sorted(split.get(cls, [])):
                images.append(_decode(read(p), str(p), image_size))
                labels.append(label)
        shapes = {img.shape for img in images}
        if len(shapes) > 1:
            raise UserError(f"{name}: images differ in size {sorted(shapes)[:3]}; pass an image size")
        return np.stack(images), np.asarray(labels)

    if "train" in tree and "test" in tree:
        xtr, ytr = load(tree["train"])
        xte, yte = load(tree["test"])
        return Splits(name, from_uint8(xtr, ytr, classes), from_uint8(xte, yte, classes))
    x, y = load(tree.get("all") or next(iter(tree.values())))
    tr, te = stratified_split(y, 0.2, seed)
    return Splits(name, from_uint8(x[tr], y[tr], classes), from_uint8(x[te], y[te], classes))


def load_image_folder(root: str | Path, *, image_size: tuple[int, int] | None = None, seed: int = 0) -> Splits:
    root = Path(root)
    paths = [PurePosixPath(p.relative_to(root).as_posix()) for p in root.rglob("*") if p.is_file()]
    return _build(root.name, paths, lambda p: (root / p).read_bytes(), image_size, seed)


def load_image_zip(path: str | Path, *, image_size: tuple[int, int] | None = None, seed: int = 0) -> Splits:
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UserError(f"cannot open zip {path}: {exc}") from exc
    with archive:
        infos = [i for i in archive.infolist() if not i.is_dir()]
        if len(infos) > MAX_MEMBERS or sum(i.file_size for i in infos) > MAX_UNCOMPRESSED:
            raise UserError(f"{path}: zip too large to load safely")
        paths = [PurePosixPath(i.filename) for i in infos]
        return _build(path.stem, paths, lambda p: archive.read(str(p)), image_size, seed)


def to_image_data(x: np.ndarray, y: np.ndarray, classes: tuple[str, ...] | None, where: str) -> ImageData:
    """Accept (N, H, W), (N, H, W, C) or (N, C, H, W); uint8 0-255 or float in [0, 1]."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise UserError(f"{where}: images must be 3- or 4-dimensional, got shape {x.shape}")
    if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"{where}: labels must be a 1-d integer array")
    if len(x) == 0:
        raise UserError(f"{where}: the data set is empty")
    if classes is None:
        classes = tuple(str(c) for c in range(int(y.max()) + 1))
    if x.dtype == np.uint8:
        return from_uint8(x, y, classes)
    import torch

    xf = x.astype(np.float32)
    if not np.isfinite(xf).all() or xf.min() < 0 or xf.max() > 1:
        raise UserError(f"{where}: float images must lie in [0, 1]")
    return ImageData(torch.from_numpy(xf), torch.from_numpy(y.astype(np.int64)), classes)
