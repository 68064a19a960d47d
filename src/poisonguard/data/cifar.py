"""CIFAR-10 from the JPEG `.npz` archive or a torchvision `cifar-10-batches-py` folder.

Both formats are treated as hostile: the `.npz` is read with `allow_pickle=False`, and the
pickled batches go through an unpickler that only rebuilds NumPy arrays, lists and dicts.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from poisonguard.data.dataset import Splits, from_uint8
from poisonguard.errors import UserError
from poisonguard.utils import atomic_path, sha256_file

log = logging.getLogger(__name__)

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_NPZ_KEYS = ("train_jpeg", "train_offsets", "train_labels", "test_jpeg", "test_offsets", "test_labels")


def cache_dir() -> Path:
    root = os.environ.get("POISONGUARD_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "poisonguard"
    )
    return Path(root)


def _decode_chunk(blobs: list[bytes]) -> np.ndarray:
    from PIL import Image

    out = np.empty((len(blobs), 32, 32, 3), dtype=np.uint8)
    for i, blob in enumerate(blobs):
        with Image.open(io.BytesIO(blob)) as img:
            if img.size != (32, 32):
                raise UserError(f"CIFAR-10 image {i} is {img.size}, expected 32x32")
            out[i] = np.asarray(img.convert("RGB"))
    return out


def _decode_split(jpeg: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    if offsets.ndim != 1 or offsets[0] != 0 or offsets[-1] != len(jpeg) or np.any(np.diff(offsets) <= 0):
        raise UserError("CIFAR-10 archive has inconsistent offsets")
    blobs = [jpeg[offsets[i] : offsets[i + 1]].tobytes() for i in range(len(offsets) - 1)]
    chunks = [blobs[i : i + 2500] for i in range(0, len(blobs), 2500)]
    workers = min(len(chunks), os.cpu_count() or 1)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_decode_chunk, chunks))
    else:
        parts = [_decode_chunk(c) for c in chunks]
    return np.concatenate(parts).transpose(0, 3, 1, 2)


def load_cifar10_npz(path: str | os.PathLike) -> Splits:
    """Decode the JPEG archive once and cache the uint8 arrays under the user cache directory."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"CIFAR-10 archive not found: {path}")
    cached = cache_dir() / f"cifar10-{sha256_file(path)[:16]}.npz"
    if cached.is_file():
        with np.load(cached, allow_pickle=False) as arrays:
            return _splits(*(arrays[k] for k in ("xtr", "ytr", "xte", "yte")))
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [k for k in _NPZ_KEYS if k not in arrays.files]
            if missing:
                raise UserError(f"{path} is not a CIFAR-10 JPEG archive (missing {', '.join(missing)})")
            data = {k: arrays[k] for k in _NPZ_KEYS}
    except (ValueError, OSError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from exc
    log.info("decoding CIFAR-10 JPEGs once; cached at %s", cached)
    xtr = _decode_split(data["train_jpeg"], data["train_offsets"])
    xte = _decode_split(data["test_jpeg"], data["test_offsets"])
    ytr, yte = data["train_labels"].astype(np.int64), data["test_labels"].astype(np.int64)
    with atomic_path(cached) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, xtr=xtr, ytr=ytr, xte=xte, yte=yte)
    return _splits(xtr, ytr, xte, yte)


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Rebuilds the NumPy arrays inside CIFAR batches and refuses every other global."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise UserError(f"refusing to load {module}.{name} from a CIFAR batch file (it could run code)")
        return super().find_class(module, name)


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as handle:
            batch = _ArraysOnlyUnpickler(handle, encoding="bytes").load()
    except UserError:
        raise
    except Exception as exc:  # corrupt pickles raise many types
        raise UserError(f"cannot read CIFAR batch {path}: {exc}") from exc
    if not isinstance(batch, dict):
        raise UserError(f"{path} is not a CIFAR batch")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise UserError(f"{path} is not a CIFAR batch (no data or labels)")
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise UserError(f"{path}: CIFAR data must be (N, 3072)")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def load_cifar10_batches(folder: str | os.PathLike) -> Splits:
    """Read torchvision's `cifar-10-batches-py` folder (data_batch_1..5 and test_batch)."""
    folder = Path(folder)
    names = [f"data_batch_{i}" for i in range(1, 6)]
    missing = [n for n in names + ["test_batch"] if not (folder / n).is_file()]
    if missing:
        raise UserError(f"{folder} is not a cifar-10-batches-py folder (missing {', '.join(missing)})")
    parts = [_read_batch(folder / n) for n in names]
    xte, yte = _read_batch(folder / "test_batch")
    return _splits(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), xte, yte)


def _splits(xtr, ytr, xte, yte) -> Splits:
    return Splits("cifar10", from_uint8(xtr, ytr, CLASSES), from_uint8(xte, yte, CLASSES))


def default_cifar10_path() -> Path | None:
    """Where `--data cifar10` looks: $POISONGUARD_CIFAR10, then ../shared/data beside the checkout."""
    env = os.environ.get("POISONGUARD_CIFAR10")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve()
    for base in [Path.cwd(), *here.parents]:
        candidates.append(base / ".." / "shared" / "data" / "cifar10_jpeg.npz")
        candidates.append(base / "shared" / "data" / "cifar10_jpeg.npz")
    return next((c.resolve() for c in candidates if c.is_file()), None)
