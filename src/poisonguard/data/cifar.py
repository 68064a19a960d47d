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

from poisonguard import limits
from poisonguard.data.dataset import Splits, from_uint8
from poisonguard.data.npz import INTEGER, NUMERIC, read_npz
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


def _decode_chunk(blobs: list[bytes], first: int = 0) -> np.ndarray:
    from poisonguard.data.images import decode_image

    out = np.empty((len(blobs), 3, 32, 32), dtype=np.uint8)
    for i, blob in enumerate(blobs):
        out[i] = decode_image(blob, f"CIFAR-10 image {first + i}", mode="RGB", expect=(32, 32))
    return out


def _decode_split(jpeg: np.ndarray, offsets: np.ndarray, labels: np.ndarray, split: str) -> np.ndarray:
    if jpeg.ndim != 1 or jpeg.dtype != np.uint8:
        raise UserError(f"CIFAR-10 archive: {split}_jpeg must be a 1-d uint8 array, got {jpeg.dtype} {jpeg.shape}")
    if offsets.ndim != 1 or offsets.dtype.kind not in "iu" or len(offsets) < 2:
        raise UserError(f"CIFAR-10 archive: {split}_offsets must be a 1-d integer array of at least 2 offsets "
                        f"(got {offsets.dtype} {offsets.shape}: no images)")
    if offsets[0] != 0 or offsets[-1] != len(jpeg) or np.any(np.diff(offsets.astype(np.int64)) <= 0):
        raise UserError(f"CIFAR-10 archive has inconsistent {split} offsets")
    n = len(offsets) - 1
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != n:
        raise UserError(f"CIFAR-10 archive: {split}_labels must be {n} integer labels, got {labels.dtype} {labels.shape}")
    if labels.min() < 0 or labels.max() >= len(CLASSES):
        raise UserError(f"CIFAR-10 archive: {split} labels must lie in [0, {len(CLASSES) - 1}]")
    limits.check("max_dataset_values", n * 3 * 32 * 32, f"CIFAR-10 archive: the {split} split's value count")
    blobs = [jpeg[offsets[i] : offsets[i + 1]].tobytes() for i in range(n)]
    starts = list(range(0, n, 2500))
    chunks = [blobs[i : i + 2500] for i in starts]
    workers = min(len(chunks), os.cpu_count() or 1)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_decode_chunk, chunks, starts))
    else:
        parts = [_decode_chunk(c, s) for c, s in zip(chunks, starts)]
    return np.concatenate(parts)


def is_cifar_archive(path: Path) -> bool:
    """Whether an `.npz` holds the JPEG archive's arrays (read from the zip directory alone)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return "train_jpeg.npy" in archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False  # read_npz gives the message


def load_cifar10_npz(path: str | os.PathLike) -> Splits:
    """Decode the JPEG archive once and cache the uint8 arrays under the user cache directory."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"CIFAR-10 archive not found: {path}")
    cached = cache_dir() / f"cifar10-{sha256_file(path)[:16]}.npz"
    if cached.is_file():
        arrays = read_npz(cached, kinds={"xtr": "u", "xte": "u", "ytr": INTEGER, "yte": INTEGER})
        if all(k in arrays for k in ("xtr", "ytr", "xte", "yte")):
            return _splits(*(arrays[k] for k in ("xtr", "ytr", "xte", "yte")))
    kinds = {k: ("u" if k.endswith("jpeg") else INTEGER if k.endswith("offsets") else NUMERIC) for k in _NPZ_KEYS}
    data = read_npz(path, kinds=kinds)
    missing = [k for k in _NPZ_KEYS if k not in data]
    if missing:
        raise UserError(f"{path} is not a CIFAR-10 JPEG archive (missing {', '.join(missing)})")
    log.info("decoding CIFAR-10 JPEGs once; cached at %s", cached)
    xtr = _decode_split(data["train_jpeg"], data["train_offsets"], data["train_labels"], "train")
    xte = _decode_split(data["test_jpeg"], data["test_offsets"], data["test_labels"], "test")
    ytr, yte = data["train_labels"].astype(np.int64), data["test_labels"].astype(np.int64)
    try:
        with atomic_path(cached) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, xtr=xtr, ytr=ytr, xte=xte, yte=yte)
    except OSError as exc:  # a read-only cache only costs the decoding next time
        log.warning("could not cache the decoded CIFAR-10 at %s: %s", cached, exc)
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
    from poisonguard.data.images import read_file

    blob = read_file(path)  # capped at limits.max_bytes before unpickling
    try:
        batch = _ArraysOnlyUnpickler(io.BytesIO(blob), encoding="bytes").load()
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
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        # NaN or 300.0 would be cast to some byte without a word
        raise UserError(f"{path}: CIFAR data must be a uint8 array, got {getattr(data, 'dtype', type(data).__name__)}")
    if data.ndim != 2 or data.shape[1] != 3072:
        raise UserError(f"{path}: CIFAR data must be (N, 3072)")
    if not isinstance(labels, (list, np.ndarray)) or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in labels):
        raise UserError(f"{path}: CIFAR labels must be a list of integers")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim != 1 or len(labels) != len(data):
        raise UserError(f"{path}: {len(data)} images but {labels.size} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise UserError(f"{path}: CIFAR labels must lie in [0, {len(CLASSES) - 1}]")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10_batches(folder: str | os.PathLike) -> Splits:
    """Read torchvision's `cifar-10-batches-py` folder (data_batch_1..5 and test_batch)."""
    folder = Path(folder)
    names = [f"data_batch_{i}" for i in range(1, 6)]
    missing = [n for n in names + ["test_batch"] if not (folder / n).is_file()]
    if missing:
        raise UserError(f"{folder} is not a cifar-10-batches-py folder (missing {', '.join(missing)})")
    parts = [_read_batch(folder / n) for n in names]
    xte, yte = _read_batch(folder / "test_batch")
    limits.check("max_dataset_values", sum(p[0].size for p in parts) + xte.size, f"{folder}: the data set's value count")
    return _splits(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), xte, yte)


def _splits(xtr, ytr, xte, yte) -> Splits:
    return Splits("cifar10", from_uint8(xtr, ytr, CLASSES), from_uint8(xte, yte, CLASSES))


def default_cifar10_path() -> Path | None:
    """Where `--data cifar10` looks: $POISONGUARD_CIFAR10, then shared/data/cifar10_jpeg.npz in or
    beside a folder above the installed package (the checkout). Never the current folder: a
    file planted there must not replace the configured data."""
    env = os.environ.get("POISONGUARD_CIFAR10")
    if env:
        if not Path(env).expanduser().is_file():
            raise UserError(f"POISONGUARD_CIFAR10={env} is not a file")
        return Path(env).expanduser().resolve()
    candidates = []
    for base in Path(__file__).resolve().parents:
        candidates.append(base / ".." / "shared" / "data" / "cifar10_jpeg.npz")
        candidates.append(base / "shared" / "data" / "cifar10_jpeg.npz")
    return next((c.resolve() for c in candidates if c.is_file()), None)
