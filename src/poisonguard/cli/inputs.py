"""Loading what the user gave on the command line: data, model, trigger, output folder.

Every check here ends in a `UserError` (one line, exit 2) rather than a traceback.
"""

from __future__ import annotations

from pathlib import Path

from poisonguard.errors import UserError

def out_dir(path: str, *inputs: str | Path | None) -> Path:
    """The output folder, refusing any place where an output would replace an input file."""
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    for item in inputs:
        if item is None:
            continue
        item = Path(item).expanduser()
        if item.exists() and item.resolve().parent == out.resolve():
            raise UserError(f"--out {out} holds the input {item.name}; choose another folder so it is not overwritten")
    return out


# ---------------------------------------------------------------- loading what the user gave

def load_splits(spec: str, seed: int):
    from poisonguard.data import load_data

    splits = load_data(spec, seed=seed)
    if len(splits.train) == 0 or len(splits.test) == 0:
        raise UserError(f"data set {spec!r} is empty")
    return splits


def load_checked_model(path: str, splits, arch: str | None):
    """Load a model safely and check it is a classifier for this data; return (LoadedModel, info)."""
    from poisonguard.models import check_classifier, load_model

    loaded = load_model(path, arch=arch, num_classes=splits.num_classes, input_shape=splits.input_shape)
    if loaded.input_shape is not None and tuple(loaded.input_shape) != tuple(splits.input_shape):
        raise UserError(f"the model takes inputs {tuple(loaded.input_shape)} but the data has {splits.input_shape}")
    check_classifier(loaded.model, splits.input_shape, splits.num_classes)
    info = {"path": str(path), "sha256": loaded.sha256, "num_classes": splits.num_classes,
            "input_shape": list(splits.input_shape), "format": loaded.format,
            "architecture": loaded.metadata.get("architecture")}
    return loaded, info


def load_checked_trigger(path: str | None, splits):
    if path is None:
        return None
    from poisonguard.attacks import check_trigger_fits, load_trigger

    trigger = load_trigger(path)
    check_trigger_fits(trigger, splits.input_shape, splits.num_classes)
    return trigger

