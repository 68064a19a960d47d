"""Safe model files: a model file from the internet is the attack surface.

Loading never unpickles arbitrary objects. Accepted formats:
- state dicts saved by `torch.save` (read with `weights_only=True`), given an architecture;
- `.safetensors` state dicts, given an architecture;
- TorchScript archives (`torch.jit.save`) and `torch.export` programs (`.pt2`), which carry
  their own code as a restricted IR rather than as pickled Python.
A pickle that names any other global (a whole pickled `nn.Module`, or a payload that would
run a shell command) is refused before anything in it runs.

`save_model` writes a state dict plus `metadata.json` beside it (architecture, classes,
input shape, sha256 of the model file, how it was trained).
"""

from __future__ import annotations

import json
import logging
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from poisonguard import __version__
from poisonguard.errors import UserError
from poisonguard.models.registry import ARCHITECTURES, build_model
from poisonguard.utils import atomic_path, atomic_write_text, sha256_file

log = logging.getLogger(__name__)

METADATA_NAME = "metadata.json"


@dataclass
class LoadedModel:
    """A model ready for evaluation (eval mode, CPU) and what is known about it."""

    model: nn.Module
    format: str
    sha256: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> list[str] | None:
        return self.metadata.get("classes")

    @property
    def input_shape(self) -> list[int] | None:
        return self.metadata.get("input_shape")


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
        "sha256": sha256_file(path),
        "training": training or {},
        **(extra or {}),
    }
    atomic_write_text(metadata_path(path), json.dumps(metadata, indent=2))
    return metadata


def _read_metadata(path: Path) -> dict[str, Any]:
    meta_file = metadata_path(path)
    if not meta_file.is_file():
        return {}
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{meta_file} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise UserError(f"{meta_file} must hold a JSON object")
    shape = meta.get("input_shape")
    if shape is not None and (
        not isinstance(shape, list) or len(shape) != 3 or not all(isinstance(s, int) and s > 0 for s in shape)
    ):
        raise UserError(f"{meta_file}: input_shape must be three positive integers")
    classes = meta.get("classes")
    if classes is not None and (not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)):
        raise UserError(f"{meta_file}: classes must be a list of strings")
    return meta


def _zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return []


def _looks_like_torch_file(path: Path) -> bool:
    """A zip archive (torch.save since 1.6) or a pickle stream (legacy format, protocol >= 2)."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    return head.startswith(b"PK") or head[:1] == b"\x80"


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"cannot read safetensors file {path}: {exc}") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not _looks_like_torch_file(path):
            raise UserError(f"cannot read model file {path}: not a valid PyTorch file") from exc
        raise UserError(
            f"refused {path}: it holds pickled Python objects beyond tensors, which could run code "
            "when loaded; save a state_dict, safetensors, TorchScript or torch.export file instead"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise UserError(f"cannot read model file {path}: {exc}") from exc
    # Common wrappers from training scripts: {"state_dict": {...}} or {"model": {...}}.
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} is not a state dict of tensors")
    return obj


def load_model(
    path: str | Path,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    input_shape: Sequence[int] | None = None,
) -> LoadedModel:
    """Load a model file safely; see the module docstring for the formats.

    Args:
        path: the model file.
        arch: architecture name for a bare state dict (else read from metadata.json).
        num_classes, input_shape: used when metadata.json does not give them.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file not found: {path}")
    digest = sha256_file(path)
    meta = _read_metadata(path)
    if meta.get("sha256") and meta["sha256"] != digest:
        raise UserError(f"{path} does not match the sha256 in {metadata_path(path)}: it was changed after saving")
    names = _zip_names(path)
    if path.suffix.lower() == ".pt2":
        try:
            model = torch.export.load(str(path)).module()
        except Exception as exc:  # torch.export raises many types on a bad archive
            raise UserError(f"cannot load torch.export program {path}: {exc}") from exc
        return LoadedModel(model, "torch.export", digest, meta)
    if any(n.split("/", 1)[-1].startswith("code/") for n in names):
        try:
            model = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # TorchScript raises RuntimeError and friends
            raise UserError(f"cannot load TorchScript file {path}: {exc}") from exc
        return LoadedModel(model.eval(), "torchscript", digest, meta)
    state = _load_state_dict(path)
    arch = arch or meta.get("architecture")
    if arch is None:
        raise UserError(f"{path} is a bare state dict: name its architecture (--arch; known: {', '.join(ARCHITECTURES.names())})")
    num_classes = meta.get("num_classes") or num_classes
    input_shape = meta.get("input_shape") or input_shape
    if num_classes is None or input_shape is None:
        raise UserError(f"{path}: the number of classes and input shape are unknown (no metadata.json)")
    model = build_model(arch, num_classes=int(num_classes), input_shape=input_shape)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"{path} does not fit architecture {arch!r}: {first}") from exc
    meta = {**meta, "architecture": ARCHITECTURES.normalise(arch), "num_classes": int(num_classes),
            "input_shape": [int(s) for s in input_shape]}
    return LoadedModel(model.eval(), "state_dict", digest, meta)
