"""Loading data sets into tensors: `load_data("mnist5k")`, CIFAR-10, image folders, zips, `.npz`, tables."""

from __future__ import annotations

from pathlib import Path

from poisonguard.data.dataset import (
    Data, ImageData, Splits, TableInfo, input_bounds, input_space, per_class_subset, stratified_split,
)
from poisonguard.errors import UserError

__all__ = ["Data", "ImageData", "Splits", "TableInfo", "input_bounds", "input_space", "check_spec", "load_data", "per_class_subset", "stratified_split", "DATASET_NAMES"]

DATASET_NAMES = ("mnist5k", "cifar10")


def check_spec(spec: str) -> None:
    """UserError unless `spec` names a built-in data set or an existing regular file or folder (nothing is read)."""
    if spec.strip().lower() in DATASET_NAMES:
        return
    path = Path(spec).expanduser()
    if not path.exists():
        known = ", ".join(DATASET_NAMES)
        raise UserError(f"unknown data set {spec!r}: not one of {known} and no such file or folder")
    if not path.is_dir() and not path.is_file():  # a fifo or device: opening it could block forever
        raise UserError(f"data set {spec!r} is not a regular file or folder")


def load_data(spec: str, *, seed: int = 0, image_size: tuple[int, int] | None = None,
              label_column: str | None = None) -> Splits:
    """Load a data set by name or path.

    Args:
        spec: `mnist5k`; `cifar10` (the JPEG archive found by `default_cifar10_path`);
            a `cifar10_jpeg.npz`-style archive; a `cifar-10-batches-py` folder; an image
            folder or `.zip` of one (one sub-folder per class, optional train/ and test/);
            an `.npz` with arrays `x` and `y`; or a `.csv`/`.parquet` table (`data.table`).
        seed: seeds the train/test split of sources that come without one.
        label_column: a table's label column (default: the run's `--label-column`).
        image_size: (width, height) to resize folder images to.

    Returns:
        Splits with float images in [0, 1], shape (N, C, H, W), or for a table
        kind="tabular" rows (N, F) in raw units.
    """
    from poisonguard.data import arrays, cifar, folder, mnist, options, table

    check_spec(spec)
    key = spec.strip().lower()
    if key == "mnist5k":
        return mnist.load_mnist5k()
    if key == "cifar10":
        path = cifar.default_cifar10_path()
        if path is None:
            raise UserError("CIFAR-10 archive not found; set POISONGUARD_CIFAR10 or pass its path")
        return cifar.load_cifar10_npz(path)
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "data_batch_1").is_file():
            return cifar.load_cifar10_batches(path)
        return folder.load_image_folder(path, image_size=image_size, seed=seed)
    if table.is_table(path):
        return table.load_table(path, label_column=label_column or options.get("label_column"), seed=seed)
    if path.suffix.lower() == ".zip":
        return folder.load_image_zip(path, image_size=image_size, seed=seed)
    if path.suffix.lower() == ".npz":
        return cifar.load_cifar10_npz(path) if cifar.is_cifar_archive(path) else arrays.load_npz(path, seed=seed)
    raise UserError(f"cannot tell what data set {path} is (expected a folder, .zip, .npz, .csv or .parquet)")
