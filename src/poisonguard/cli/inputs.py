"""Loading what the user gave on the command line: data, model, trigger, output folder.

Every check here ends in a `UserError` (one line, exit 2) rather than a traceback.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Iterable, Sequence

from poisonguard.errors import UserError

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- the output folder

MARKER = ".poisonguard-out.json"  # which command wrote this folder, from which inputs

_REPORT = ("report.json", "report.html")
_MODEL = ("model.pt", "model.safetensors", "model.pt2", "model.onnx", "metadata.json")  # repair writes the input's format
# What each command writes into its --out (globs relative to it). When a command runs again
# into its own folder, or --force takes over another's, the old outputs go first, so no stale
# file (an old trigger_7.npz that `repair --from-scan` would pick up) passes for a new one.
OUTPUTS: dict[str, tuple[str, ...]] = {
    "attack": (*_REPORT, *_MODEL, "trigger.npz"),
    "train": (*_REPORT, *_MODEL, "trigger.npz"),
    "evaluate": _REPORT,
    "scan": (*_REPORT, "trigger_*.npz"),
    "repair": (*_REPORT, *_MODEL),
    "certify": _REPORT,
    "fl-simulate": _REPORT,
    "fl-compare": _REPORT,
    "checklist": (*_REPORT, "trigger_*.npz", *(f"repaired/{n}" for n in _MODEL)),
    "demo": (*_REPORT, "trigger_*.npz", *(f"{d}/{n}" for d in ("repaired", "backdoored", "clean")
                                         for n in (*_MODEL, "trigger.npz"))),
    "audit": (),  # audit resumes from what is already there
}
_TEMPORARY = (".*.tmp",)  # half-written files of an interrupted run (utils.atomic_path)


def model_inputs(path: str | Path | None) -> list[tuple[str, Path]]:
    """A model file and the metadata.json beside it (both are the user's and must survive)."""
    if path is None:
        return []
    from poisonguard.models.files import metadata_path

    model = Path(path).expanduser()
    items = [("model", model)]
    meta = metadata_path(model)
    if meta.exists():
        items.append(("model metadata", meta))
    return items


def data_inputs(spec: str | None, label: str = "data") -> list[tuple[str, Path | str]]:
    """A --data value: its file or folder, the archive `cifar10` stands for, or the name itself."""
    if spec is None:
        return []
    key = spec.strip().lower()
    if key == "cifar10":
        from poisonguard.data.cifar import default_cifar10_path

        try:
            path = default_cifar10_path()
        except UserError:
            path = None
        return [(label, path if path is not None else spec)]
    path = Path(spec).expanduser()
    return [(label, path if path.exists() else spec)]


def file_inputs(*items: tuple[str, str | Path | None]) -> list[tuple[str, Path]]:
    return [(label, Path(p).expanduser()) for label, p in items if p]


def fingerprint(item: Path | str) -> str:
    """sha256 of a file; of the listing (names, sizes, times) of a folder; the name of a built-in data set."""
    if not isinstance(item, Path):
        return f"name:{item}"
    if item.is_file():
        from poisonguard.utils import sha256_file

        try:
            return "sha256:" + sha256_file(item)
        except OSError:
            return f"unreadable:{item}"
    if item.is_dir():
        digest = hashlib.sha256()
        count = 0
        for folder, dirs, files in os.walk(item):
            dirs.sort()
            for name in sorted(files):
                p = Path(folder) / name
                try:
                    st = p.lstat()
                except OSError:
                    continue
                digest.update(f"{p.relative_to(item)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "replace"))
                count += 1
                if count > 200_000:  # enough to tell two folders apart
                    return "listing:" + digest.hexdigest()
        return "listing:" + digest.hexdigest()
    return f"missing:{item}"


def _previous(out: Path) -> dict | None:
    """What wrote `out` before: its marker, else the `command` of a report.json; None when unknown."""
    for name in (MARKER, "report.json"):
        try:
            data = json.loads((out / name).read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError, RecursionError):
            continue
        if isinstance(data, dict) and isinstance(data.get("command"), str):
            return {"command": data["command"], "inputs": data.get("inputs") if name == MARKER else None}
    return None


def _remove_outputs(out: Path, patterns: Iterable[str]) -> list[str]:
    removed = []
    for pattern in (*patterns, *_TEMPORARY):
        for f in sorted(out.glob(pattern)):
            if f.is_file() or f.is_symlink():  # files only: never a folder the command did not make
                f.unlink()
                removed.append(str(f.relative_to(out)))
    for sub in sorted({Path(p).parent for p in patterns if "/" in p}, reverse=True):
        try:
            (out / sub).rmdir()  # only when empty
        except OSError:
            pass
    return removed


def guard_out(
    path: str | None,
    *,
    command: str,
    inputs: Sequence[tuple[str, Path | str]] = (),
    force: bool = False,
    outputs: Sequence[str] | None = None,
    match_inputs: bool = True,
) -> Path:
    """Check and claim the output folder before any work, so nothing the user gave is overwritten.

    Refuses (UserError): an empty --out; one that lies under a file or cannot be written; one
    that is, holds (at any depth, so through the sub-folders a command writes, e.g.
    OUT/repaired/model.pt) or lies inside an input; and, unless `force`, one that holds another
    command's outputs, the same command's outputs from other inputs (`match_inputs`), or files
    poisonguard did not write. The same command on the same inputs may run again into its own
    folder. Before a rerun or a forced takeover the old outputs are removed. Finally writes
    OUT/.poisonguard-out.json (the claim), which also proves the folder is writable.

    Args:
        path: the --out value.
        command: the command's name (a key of OUTPUTS, e.g. "scan", "fl-simulate").
        inputs: (label, path) for every file or folder the command reads (model_inputs,
            data_inputs, file_inputs); a non-path (a built-in data set's name) is a str.
        outputs: the globs this command writes (default OUTPUTS[command]).
        match_inputs: False for commands that resume over changing inputs (audit).
    """
    if path is None or not str(path).strip():
        raise UserError("--out is empty; name a folder for the outputs")
    out = Path(path).expanduser()
    real = out.resolve()
    anc = real
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if anc != real and not anc.is_dir():
        raise UserError(f"--out {out} lies under {anc}, which is a file, not a folder")
    if real.exists() and not real.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    claimed = {}
    for label, item in inputs:
        if not isinstance(item, Path) or not item.exists():
            claimed[label if label not in claimed else f"{label} {item}"] = fingerprint(item)
            continue
        src = item.resolve()
        if src == real:
            raise UserError(f"--out {out} is the {label} {item}; choose another folder so it is not overwritten")
        if src.is_relative_to(real):
            raise UserError(f"--out {out} holds the {label} {item} (outputs and their sub-folders go there); "
                            "choose another folder so it is not overwritten")
        if src.is_dir() and real.is_relative_to(src):
            raise UserError(f"--out {out} lies inside the {label} folder {item}; choose a folder outside it so "
                            "nothing there is overwritten")
        claimed[label if label not in claimed else f"{label} {item}"] = fingerprint(src)
    if real.is_dir():
        _take_over(real, out, command, claimed, force, outputs, match_inputs)
    from poisonguard.utils import atomic_write_text

    try:
        real.mkdir(parents=True, exist_ok=True)
        atomic_write_text(real / MARKER, json.dumps({"tool": "poisonguard", "command": command, "inputs": claimed}, indent=1))
    except OSError as exc:
        raise UserError(f"cannot write to --out {out}: {exc.strerror or exc}") from exc
    return out


def _take_over(real: Path, out: Path, command: str, claimed: dict, force: bool, outputs, match_inputs: bool) -> None:
    entries = [e.name for e in real.iterdir() if e.name != MARKER]
    if not entries:
        return
    previous = _previous(real)
    hint = "choose a new or empty folder, or pass --force to replace its outputs"
    if previous is None:
        if not force:
            shown = ", ".join(sorted(entries)[:3]) + (" ..." if len(entries) > 3 else "")
            raise UserError(f"--out {out} holds files poisonguard did not write ({shown}); {hint}")
        return
    prev = previous["command"]
    if not force:
        if prev != command and not (prev == "fl" and command.startswith("fl-")):
            raise UserError(f"--out {out} holds the outputs of `poisonguard {prev}`; {hint}")
        if match_inputs and previous["inputs"] is not None and previous["inputs"] != claimed:
            changed = sorted(k for k in set(claimed) | set(previous["inputs"])
                             if claimed.get(k) != previous["inputs"].get(k))
            raise UserError(f"--out {out} holds the outputs of `poisonguard {prev}` on other inputs "
                            f"({', '.join(changed)} differ); {hint}")
    patterns = set(OUTPUTS.get(prev, _REPORT)) | set(outputs if outputs is not None else OUTPUTS.get(command, _REPORT))
    removed = _remove_outputs(real, sorted(patterns))
    if removed:
        log.info("removed %d old output(s) of `poisonguard %s` from %s", len(removed), prev, out)


def out_dir(path: str, *inputs: str | Path | None) -> Path:
    """The output folder, refusing any place where an output would replace an input file.

    Prefer `guard_out`, which also refuses another command's folder and checks writability.
    """
    if path is None or not str(path).strip():
        raise UserError("--out is empty; name a folder for the outputs")
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    real = out.resolve()
    for item in inputs:
        if item is None:
            continue
        item = Path(item).expanduser()
        if item.exists() and (item.resolve() == real or item.resolve().is_relative_to(real)):
            raise UserError(f"--out {out} holds the input {item.name}; choose another folder so it is not overwritten")
    return out


# ---------------------------------------------------------------- loading what the user gave

def load_splits(spec: str, seed: int, *, label_column: str | None = None, model: str | Path | None = None):
    """The data's train/test splits, checked; `label_column` (a table's) defaults to the run's --label-column.

    With `model`, a table is encoded to the columns the model records (`fit_columns`).
    """
    from poisonguard.data import load_data

    if spec is None or not str(spec).strip():
        raise UserError("--data is empty; name a data set or a file")
    splits = load_data(spec, seed=seed, label_column=label_column)
    if len(splits.train) == 0:
        raise UserError(f"data set {spec!r} is empty")
    if len(splits.test) == 0:  # an 80/20 split of classes of 1 or 2 images leaves no test image
        raise UserError(f"data set {spec!r} has no test part: each class needs at least 3 images for the 80/20 "
                        "split (or give train/ and test/ parts)")
    check_input_shape(splits.input_shape, f"data set {spec!r}: one image")
    return fit_columns(splits, model) if model is not None else splits


def fit_columns(parts, model: str | Path):
    """`parts` (Splits or Rows) with a table encoded to the columns `model`'s metadata.json records.

    A second file from the training table's source often lacks a rare category, and its one-hot
    columns then differ from the model's (`data.table.encode_as`). Images, text and models that
    record no columns pass unchanged; `check_features` still refuses whatever could not be fitted.
    """
    from poisonguard.models.files import read_metadata

    if parts.train.kind != "tabular":
        return parts
    if not Path(model).exists():  # else the columns' mismatch, not the missing file, was the one line
        raise UserError(f"model file not found: {model}")
    if not Path(model).is_file():
        return parts
    return encode_to(parts, read_metadata(Path(model)).get("features"), "the model's")


def encode_to(parts, recorded, whose: str):
    """`parts` (Splits or Rows) of a table encoded to the columns `recorded` (names in order;
    `whose` says whose they are in the warning); unchanged where they already match."""
    import dataclasses

    from poisonguard.data.table import encode_as

    names = feature_record(parts).get("features")
    if parts.train.kind != "tabular" or not recorded or not names or list(recorded) == names:
        return parts
    fitted = dataclasses.replace(parts, train=encode_as(parts.train, recorded),
                                 test=None if parts.test is None else encode_as(parts.test, recorded))
    zeros = [n for n in recorded if n not in names]
    log.warning("the table was encoded to %s %d columns%s", whose, len(recorded),
                f"; {len(zeros)} categor{'y' if len(zeros) == 1 else 'ies'} it lacks ({', '.join(zeros[:3])}"
                f"{' ...' if len(zeros) > 3 else ''}) {'is' if len(zeros) == 1 else 'are'} all zeros" if zeros else
                " (its columns were in another order)")
    return fitted


def check_input_shape(shape, what: str = "the input shape") -> tuple[int, ...]:
    """UserError unless `shape` is positive integers within limits.max_input_values (before any model sees it)."""
    from poisonguard import limits

    try:
        dims = tuple(int(s) for s in shape)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{what}: the shape {shape!r} is not a list of integers") from exc
    if not dims or min(dims) < 1:
        raise UserError(f"{what}: the shape {dims} must be positive integers")
    count = 1
    for d in dims:
        count *= d
    limits.check("max_input_values", count, f"{what}: the value count of {'x'.join(map(str, dims))}")
    return dims


def check_num_classes(k, what: str = "the number of classes") -> int:
    from poisonguard import limits

    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise UserError(f"{what} must be a whole number of at least 2, got {k!r}")
    limits.check("max_classes", k, what)
    return k


def check_trainable(arch: str | None) -> None:
    """UserError for an --arch that names code or a library: poisonguard trains built-ins only."""
    from poisonguard.models.arch import spec_kind

    if arch and spec_kind(arch) != "builtin":
        from poisonguard.models import ARCHITECTURES

        raise UserError(f"--arch {arch!r}: poisonguard trains its built-in architectures only "
                        f"({', '.join(ARCHITECTURES.names())}); your own code, torchvision: and timm: name the "
                        "architecture of a model file you trained yourself, for the commands that read one "
                        "(evaluate, scan, repair, certify, filter, sanitize, checklist, audit)")


def build_checked_model(arch: str, splits, seed: int | None = None):
    """A registered architecture for this data, checked with one forward pass (e.g. 1x1 images
    are too small for the pooling of mnist_cnn: one line instead of a traceback mid-training)."""
    import warnings

    from poisonguard.models import build_model

    check_trainable(arch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero-sized layers warn at construction; the probe says why
        model = build_model(arch, num_classes=splits.num_classes, input_shape=splits.input_shape, seed=seed)
    check_model_fits(model, f"architecture {arch!r}", splits)
    return model


def check_model_fits(model, what: str, splits) -> None:
    """UserError unless `model` maps two zero inputs of the data's shape and type (images, table
    rows, token ids) to one score per class."""
    import torch

    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *splits.input_shape, dtype=splits.train.x.dtype))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        size = "x".join(str(s) for s in splits.input_shape)
        if splits.kind != "image":
            raise UserError(f"{what} cannot take {splits.kind} inputs of shape {size} ({first}); "
                            "use another --arch") from exc
        raise UserError(f"{what} cannot take {size} images ({first}); "
                        "use larger images or another --arch") from exc
    finally:
        model.train(was)
    if tuple(out.shape) != (2, splits.num_classes):
        raise UserError(f"{what} gives outputs {tuple(out.shape[1:])} for {splits.num_classes} classes")


def check_finite_model(model, what: str = "the trained model", x=None) -> None:
    """UserError when any weight is NaN or Inf, or (given inputs `x`) any output is: training
    diverged (e.g. --lr 1e30), and such a model is never saved."""
    import torch

    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise UserError(f"{what} has NaN or Inf weights ({name}): training diverged; lower --lr "
                            "(nothing was saved)")
    if x is not None:
        from poisonguard.utils import model_device

        was = model.training
        model.eval()
        with torch.no_grad():
            out = model(x.to(model_device(model)))
        model.train(was)
        if not torch.isfinite(out).all():  # weights of 1e28 are finite, their outputs are not
            raise UserError(f"{what} gives NaN or Inf outputs: training diverged; lower --lr (nothing was saved)")


def load_checked_model(path: str, splits, arch: str | None, *, args=None):
    """Load a model safely and check it is a classifier for this data; return (LoadedModel, info).

    `args` (the parsed command line) supplies --arch-kwargs, --normalize and --input-size.
    A model whose accuracy on the data is near chance gets a warning naming those options.
    """
    from poisonguard.cli.options import model_options
    from poisonguard.models import check_classifier, load_model

    options = model_options(args) if args is not None else {}
    loaded = load_model(path, arch=arch, num_classes=splits.num_classes, input_shape=splits.input_shape, **options)
    hint = (" (a table's one-hot columns follow the categories its file holds: a metadata.json beside the model "
            "listing the training table's encoded columns as 'features' lets poisonguard align them)"
            if splits.kind == "tabular" and not loaded.metadata.get("features") else "")
    if loaded.input_shape is not None and tuple(loaded.input_shape) != tuple(splits.input_shape):
        raise UserError(f"the model takes inputs {tuple(loaded.input_shape)} but the data has {splits.input_shape}{hint}")
    if loaded.metadata.get("num_classes") not in (None, splits.num_classes):
        raise UserError(f"the model has {loaded.metadata['num_classes']} classes but the data has {splits.num_classes}")
    check_features(loaded.metadata.get("features"), splits)
    recorded = loaded.metadata.get("classes")
    if loaded.metadata.get("features") and recorded and list(recorded) != list(splits.classes):
        # a table model poisonguard saved names its labels; another file's labels, sorted, may differ
        raise UserError(f"the model's classes are {recorded} but this table's labels are {list(splits.classes)}; "
                        "label the table with the model's class names")
    if recorded and not loaded.metadata.get("features") and list(map(str, recorded)) != list(splits.classes):
        # Images: classes are matched by index, which is right for a folder named otherwise (an
        # MNIST model read with folders zero..nine) and wrong when the folders differ (one empty).
        log.warning("the model's classes are %s but the data's are %s; they are matched by index (class i of "
                    "the data is the model's output i)", list(recorded)[:10], list(splits.classes)[:10])
    try:
        check_classifier(loaded.model, splits.input_shape, splits.num_classes)
    except UserError as exc:  # the columns' hint where the input was refused, not the outputs' count
        raise UserError(f"{exc}{hint if 'inputs of shape' in str(exc) else ''}") from exc
    warn_near_chance(loaded, splits)
    info = {"path": str(path), "sha256": loaded.sha256, "num_classes": splits.num_classes,
            "input_shape": list(splits.input_shape), "format": loaded.format,
            "architecture": loaded.metadata.get("architecture")}
    for key in ("normalize", "input_size", "static_batch"):
        if key in loaded.metadata:
            info[key] = loaded.metadata[key]
    return loaded, info


def feature_record(splits) -> dict:
    """What a saved table model records of its input: the encoded columns' names, in order
    (`{"features": [...]}`; nothing for images and text). `check_features` reads it back."""
    names = getattr(splits.train.meta, "feature_names", None) if splits.train.kind == "tabular" else None
    return {"features": list(names)} if names else {}


def check_features(recorded, splits) -> None:
    """UserError when a table encodes other columns than the model was trained on.

    A table's one-hot columns follow its own categories, so a second file that lacks one
    category, or holds another, can have the same width in another order: the model would read
    every row wrongly and nothing would fail. Models poisonguard saved record their columns.
    """
    names = feature_record(splits).get("features")
    if not recorded or not names or list(recorded) == names:
        return
    first = next((i for i, (a, b) in enumerate(zip(recorded, names)) if a != b), min(len(recorded), len(names)))
    model_col = recorded[first] if first < len(recorded) else "(none)"
    data_col = names[first] if first < len(names) else "(none)"
    raise UserError(f"the model was trained on other columns than this table encodes: column {first} is {model_col!r} "
                    f"for the model but {data_col!r} here (a category missing from, or new to, one of the files); "
                    f"give a table whose columns and categories match the training table")


def warn_near_chance(loaded, splits, *, samples: int = 256) -> float:
    """Accuracy on up to `samples` test images; a warning when it is within 1.5x of chance."""
    import logging

    import torch

    from poisonguard.models import set_eval

    data = splits.test
    if data.kind != "image":
        return float("nan")  # the hint is about image preprocessing; a table's chance level is its class balance
    n = min(samples, len(data))
    with torch.no_grad():
        set_eval(loaded.model)
        acc = float((loaded.model(data.x[:n]).argmax(1) == data.y[:n]).float().mean())
    chance = 1 / max(2, splits.num_classes)
    if acc < 1.5 * chance:
        logging.getLogger("poisonguard").warning(
            "the model's accuracy on this data is %.1f%%, near chance (%.1f%%): does it expect other inputs? "
            "--normalize MEAN,STD and --input-size H,W put its preprocessing inside it (inputs stay in [0, 1])",
            100 * acc, 100 * chance)
    return acc


def load_checked_trigger(path: str | None, splits):
    if path is None:
        return None
    from poisonguard.attacks import check_trigger_fits, load_trigger

    trigger = load_trigger(path)
    check_trigger_fits(trigger, splits.input_shape, splits.num_classes)
    return trigger

