"""Safe model files: a model file from the internet is the attack surface.

Loading never unpickles arbitrary objects and recognises a file's format by its bytes, never
its name. `poisonguard.filesafety.require_safe` checks the file before torch, safetensors or
onnx touch it. Accepted formats (one file each in `models/formats/`):
- state dicts saved by `torch.save` (read with `weights_only=True`), including Hugging Face
  `pytorch_model.bin` and Lightning `.ckpt`, `.safetensors`, and sharded checkpoints given by
  their `*.index.json`, with an architecture from `--arch` or `metadata.json` (`models.arch`);
- TorchScript archives (`torch.jit.save`), `torch.export` programs (`.pt2`) and ONNX graphs,
  which carry their own computation and are turned into eager modules (`models.graph`).
A pickle that names any other global (a whole pickled `nn.Module`, or a payload that would
run a shell command) is refused before anything in it runs.

`save_model` writes a state dict plus `metadata.json` beside it (architecture, classes,
input shape, sha256 of the model file, how it was trained); `LoadedModel.save_like` writes a
repaired model back in the format it was read from.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from poisonguard import __version__, limits
from poisonguard.errors import UserError
from poisonguard.models.handle import LoadedModel
from poisonguard.models.registry import ARCHITECTURES
from poisonguard.utils import atomic_path, atomic_write_text, sha256_file

log = logging.getLogger(__name__)

METADATA_NAME = "metadata.json"
MAX_METADATA_BYTES = 4 * 2**20


def metadata_path(model_path: str | Path) -> Path:
    return Path(model_path).parent / METADATA_NAME


def save_model(
    model: nn.Module,
    path: str | Path,
    *,
    arch: str,
    classes: Sequence[str],
    input_shape: Sequence[int],
    training: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write `model`'s state dict to `path` and `metadata.json` beside it; return the metadata."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    metadata = {
        "tool": "poisonguard",
        "version": __version__,
        "format": "state_dict",
        "architecture": ARCHITECTURES.normalise(arch),
        "num_classes": len(classes),
        "classes": list(classes),
        "input_shape": [int(s) for s in input_shape],
        "file": path.name,
        "sha256": sha256_file(path),
        "training": training or {},
        **(extra or {}),
    }
    atomic_write_text(metadata_path(path), json.dumps(metadata, indent=2))
    return metadata


def describes(meta: dict, path: Path) -> bool:
    """Whether metadata.json is `path`'s. A folder of models shares one metadata.json name: the
    file poisonguard saved it for is named in it ("file"; before that, always model.*), so a
    model saved beside another is not judged by the other's record (its sha256 made every other
    file in a zoo "changed after saving"). A record without a sha256 (written by hand) applies."""
    if isinstance(meta.get("file"), str):
        return meta["file"] == path.name
    return not meta.get("sha256") or path.stem == "model"


def read_metadata(path: Path) -> dict[str, Any]:
    """metadata.json beside the model, checked field by field (it is as untrusted as the model)."""
    from poisonguard.models.arch import spec_kind
    from poisonguard.models.wrappers import check_normalize, check_size

    meta_file = metadata_path(path)
    if not meta_file.is_file():
        return {}
    if meta_file.stat().st_size > MAX_METADATA_BYTES:
        raise UserError(f"{meta_file} is larger than {MAX_METADATA_BYTES // 2**20} MiB")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise UserError(f"{meta_file} is not valid JSON: {str(exc).splitlines()[0] if str(exc) else exc}") from exc
    if isinstance(meta, dict) and not describes(meta, Path(path)):
        log.warning("%s describes another file (%s), not %s: not used for it", meta_file,
                    meta.get("file") or "model.*", Path(path).name)
        return {}
    if not isinstance(meta, dict):
        raise UserError(f"{meta_file} must hold a JSON object")
    n = meta.get("num_classes")
    if n is not None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 2:
            raise UserError(f"{meta_file}: num_classes must be a whole number of at least 2, got {n!r}")
        limits.check("max_classes", n, f"{meta_file}: num_classes")
    shape = meta.get("input_shape")
    if shape is not None:
        # (C, H, W) for images, (F,) for feature vectors, (L,) for token ids
        if not isinstance(shape, list) or len(shape) not in (1, 3) or not all(
                isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
            raise UserError(f"{meta_file}: input_shape must be three positive integers (C, H, W) or one (features)")
        limits.check("max_input_values", int(np.prod(shape)), f"{meta_file}: input_shape {shape}")
    classes = meta.get("classes")
    if classes is not None and (not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)
                                or len(classes) > limits.get("max_classes")):
        raise UserError(f"{meta_file}: classes must be a list of strings")
    arch = meta.get("architecture")
    if arch is not None:
        if not isinstance(arch, str) or not arch.strip():
            raise UserError(f"{meta_file}: architecture must be a string, got {type(arch).__name__}")
        spec_kind(arch)
    kwargs = meta.get("arch_kwargs")
    if kwargs is not None and (not isinstance(kwargs, dict) or not all(isinstance(v, (str, int, float, bool)) or v is None
                                                                      for v in kwargs.values())):
        raise UserError(f"{meta_file}: arch_kwargs must map names to numbers, strings or booleans")
    if meta.get("sha256") is not None and not isinstance(meta["sha256"], str):
        raise UserError(f"{meta_file}: sha256 must be a string")
    features = meta.get("features")
    if features is not None and (not isinstance(features, list) or not all(isinstance(f, str) for f in features)
                                 or len(features) > limits.get("max_columns")):
        raise UserError(f"{meta_file}: features must be a list of feature names (a table model's encoded columns)")
    try:
        if meta.get("normalize") is not None:
            norm = meta["normalize"]
            if not isinstance(norm, dict):
                raise UserError("normalize must be {\"mean\": [...], \"std\": [...]}")
            check_normalize(norm.get("mean"), norm.get("std"), shape[0] if shape else None)
        if meta.get("input_size") is not None:
            check_size(meta["input_size"])
    except UserError as exc:
        raise UserError(f"{meta_file}: {exc}") from exc
    return meta


def _format_of(path: Path) -> str:
    """The file's format by its bytes, after the static safety check (which raises UnsafeFileError).

    A file of no model format is the user's mistake (exit 2), not a finding; a sharded
    checkpoint's `*.index.json` is JSON data naming its shards, each checked on its own.
    """
    from poisonguard import filesafety

    found = filesafety.sniff_format(path)
    if found == "unknown":
        if _is_shard_index(path):
            return "sharded"
        _onnx_without_extra(path)
        raise UserError(f"cannot read model file {path}: unknown format (poisonguard reads TorchScript, torch.export, "
                        "ONNX, torch.save state dicts, safetensors and sharded *.index.json checkpoints)")
    filesafety.require_safe(path)
    return found


def _onnx_without_extra(path: Path) -> None:
    """filesafety recognises ONNX only with onnx installed: say how to install it rather than 'unknown'."""
    import importlib.util

    with open(path, "rb") as handle:
        head = handle.read(2)
    if head[:1] == b"\x08" and importlib.util.find_spec("onnx") is None:
        from poisonguard.models.formats.onnx import INSTALL

        raise UserError(f"{path} looks like an ONNX model; reading ONNX needs onnx and onnx2torch: {INSTALL}")


def _is_shard_index(path: Path) -> bool:
    if not path.name.endswith(".index.json") or path.stat().st_size > MAX_METADATA_BYTES:
        return False
    try:
        return isinstance(json.loads(path.read_text(encoding="utf-8")).get("weight_map"), dict)
    except (ValueError, UnicodeDecodeError, AttributeError, RecursionError):
        return False


def _check_weights(model: nn.Module, path: Path) -> nn.Module:
    """Refuse bool/complex parameters; run other floating types in float32 (with a warning)."""
    odd = {str(t.dtype).replace("torch.", "") for t in list(model.parameters()) + list(model.buffers())
           if t.is_floating_point() and t.dtype != torch.float32}
    bad = {str(t.dtype).replace("torch.", "") for t in model.parameters() if t.dtype.is_complex or t.dtype == torch.bool}
    if bad:
        raise UserError(f"{path}: the model has {', '.join(sorted(bad))} parameters; a classifier's weights are real numbers")
    if odd:
        log.warning("%s: %s weights converted to float32", path.name, ", ".join(sorted(odd)))
        model = model.float()
    return model


def _saved_reading(meta: dict) -> str | None:
    """The one-output reading a model poisonguard wrote back recorded (`InputAdapter.describe`: "one logit")."""
    from poisonguard.models.wrappers import ONE_OUTPUT_READINGS

    outputs = meta.get("outputs")  # a hand-written metadata.json may hold any JSON here
    return {f"one {r}": r for r in ONE_OUTPUT_READINGS}.get(outputs) if isinstance(outputs, str) else None


def binary_reading(model, path: Path, input_shape, num_classes, choice: str | None) -> str | None:
    """How a two-class model answering one number per input is read (None for any other model);
    a guess is said in a warning that names the option to change it."""
    from poisonguard.models.wrappers import one_output_reading

    reading = None
    if input_shape is not None and num_classes == 2:
        reading = one_output_reading(model.eval(), input_shape, choice)
    if reading is None and choice is not None:
        log.warning("--binary-output %s ignored: it is for a two-class model that answers one number per input, "
                    "and %s does not", choice, path.name)
    if reading is not None and choice is None:
        other = "logit" if reading == "probability" else "probability"
        log.warning("%s answers one number per input for two classes: read as the %s of class 1 (its answers "
                    "on a probe %s); --binary-output %s if it is the %s", path.name, reading,
                    "all lie in [0, 1]" if reading == "probability" else "leave [0, 1]", other, other)
    return reading


def load_model(
    path: str | Path,
    *,
    arch: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    num_classes: int | None = None,
    input_shape: Sequence[int] | None = None,
    normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    input_size: Sequence[int] | None = None,
    binary_output: str | None = None,
) -> LoadedModel:
    """Load a model file safely; see the module docstring for the formats.

    Args:
        path: the model file (for a sharded checkpoint, its `*.index.json`).
        arch: architecture of a weights-only file (else read from metadata.json). Typed by the
            caller, it may name the caller's own code (`file.py:callable`, `package.module:callable`),
            called with exactly `arch_kwargs`; metadata.json never may.
        num_classes, input_shape: used when metadata.json does not give them; the input shape
            (C, H, W) also lets graph formats become eager modules.
        normalize: (mean, std) applied inside the model, so it takes [0, 1] inputs.
        input_size: (H, W) the model expects; inputs are resized to it inside the model.
        binary_output: "logit" or "probability": how a two-class model's one answer per input
            is read (default: what its metadata.json says, else a probe's guess; `wrappers`).
    """
    from poisonguard.models.formats import FORMATS, LoadRequest, format_for
    from poisonguard.models.wrappers import InputAdapter, check_normalize, check_size, outputs_probabilities

    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file not found: {path}")
    digest = sha256_file(path)
    meta = read_metadata(path)
    if meta.get("sha256") and meta["sha256"] != digest:
        raise UserError(f"{path} does not match the sha256 in {metadata_path(path)}: it was changed after saving")
    sniffed = _format_of(path)
    fmt = format_for(sniffed, path)
    n_classes = meta.get("num_classes") or num_classes
    shape = meta.get("input_shape") or (list(input_shape) if input_shape is not None else None)
    if shape is not None:
        if len(shape) not in (1, 3):
            raise UserError(f"input shape {tuple(shape)} must be (C, H, W), or (F,) for feature vectors")
        limits.check("max_input_values", math.prod(int(v) for v in shape), f"the input shape {tuple(shape)}")
    if normalize is None and meta.get("normalize"):
        normalize = (meta["normalize"]["mean"], meta["normalize"]["std"])
    if input_size is None and meta.get("input_size"):
        input_size = meta["input_size"]
    inner_shape = shape
    if shape is not None and len(shape) == 1 and (input_size is not None or normalize is not None):
        raise UserError("--normalize and --input-size are for images; a table model scales its features inside")
    if input_size is not None:
        input_size = check_size(list(input_size))
        inner_shape = [shape[0], *input_size] if shape is not None else None
    request = LoadRequest(path=path, metadata=meta, arch=arch, arch_kwargs=dict(arch_kwargs or {}),
                          trusted_arch=arch is not None, num_classes=n_classes, input_shape=inner_shape)
    if arch is not None and not fmt.needs_arch:
        log.warning("--arch %s ignored: %s files carry their own architecture", arch, fmt.name)
    model, found = fmt.load(request)
    model = _check_weights(model, path)
    info = {k: v for k, v in found.items() if k != "eager"}
    probabilities = inner_shape is not None and outputs_probabilities(model.eval(), inner_shape)
    if probabilities:
        log.warning("%s outputs probabilities (its rows sum to 1): poisonguard takes their logarithm as the "
                    "logits; a repaired model is written back with its softmax", path.name)
    reading = binary_reading(model, path, inner_shape, n_classes, binary_output or _saved_reading(meta))
    if normalize is not None or input_size is not None or probabilities or reading:
        mean, std = check_normalize(list(normalize[0]), list(normalize[1]), shape[0] if shape else None) if normalize else (None, None)
        model = InputAdapter(model, mean=mean, std=std, size=input_size, log_outputs=probabilities,
                             one_output=reading).eval()
        info.update(model.describe())
    meta = {**meta, **info, "format": FORMATS.normalise(fmt.name)}
    if n_classes is not None:
        meta["num_classes"] = int(n_classes)
    if shape is not None:
        meta["input_shape"] = [int(s) for s in shape]
    return LoadedModel(model.eval() if not isinstance(model, torch.jit.ScriptModule) else model, fmt.name, digest,
                       meta, str(path))
