"""Weights-only files, given an architecture: torch state dicts and safetensors.

Accepted: `torch.save` state dicts read with `weights_only=True` (also Hugging Face
`pytorch_model.bin` and Lightning `.ckpt`, whose `state_dict` is taken and whose
`hyper_parameters` are kept as data), `.safetensors`, and sharded checkpoints given by their
`*.index.json` (Hugging Face layout: `weight_map` from tensor name to a shard file beside it).
The architecture comes from `--arch` or `metadata.json` (see `models.arch`). Written back as
safetensors.
"""

from __future__ import annotations

import json
import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from poisonguard.errors import UserError
from poisonguard.models.formats import LoadRequest, ModelFormat, first_line, register_format
from poisonguard.utils import atomic_path

log = logging.getLogger(__name__)

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
PREFIXES = ("model.", "module.", "net.")  # Lightning's self.model, DataParallel, common wrappers
SHOWN = 5


def _torch_state(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # The file passed the safety check (`require_safe` runs first), so it imports nothing
        # dangerous: it is a pickle torch's weights-only reader cannot take (a plain pickle.dump, or
        # objects beyond tensors), not a file that would run code.
        raise UserError(f"cannot read model file {path}: torch's weights-only reader refuses this pickle (it was not "
                        "written by torch.save, or it holds Python objects beyond tensors); save a state_dict, "
                        "safetensors, TorchScript or torch.export file instead") from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise UserError(f"cannot read model file {path}: {first_line(exc)}") from exc
    info: dict[str, Any] = {}
    if isinstance(obj, dict) and isinstance(obj.get("hyper_parameters"), dict):
        info["checkpoint_hyper_parameters"] = _plain(obj["hyper_parameters"])
    for key in WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            info["checkpoint_key"] = key
            break
    return obj, info


def _plain(value: Any, depth: int = 0) -> Any:
    """Hyper-parameters as JSON data (anything else as its type name)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if depth < 3 and isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in value[:50]]
    if depth < 3 and isinstance(value, dict):
        return {str(k): _plain(v, depth + 1) for k, v in list(value.items())[:50]}
    return type(value).__name__


def _safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"cannot read safetensors file {path}: {first_line(exc)}") from exc


def _sharded(path: Path) -> dict[str, torch.Tensor]:
    from poisonguard.filesafety import require_safe

    try:
        weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError) as exc:
        raise UserError(f"{path} is not a sharded checkpoint index (no weight_map)") from exc
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise UserError(f"{path}: weight_map must map tensor names to shard file names")
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        if Path(shard).name != shard or shard in (".", ".."):
            raise UserError(f"{path}: shard {shard!r} must be a file name beside the index")
        file = path.parent / shard
        if not file.is_file():
            raise UserError(f"{path}: shard {shard} not found beside the index")
        if file.is_symlink() or file.resolve().parent != path.parent.resolve():
            # as ONNX external data: a link must not make the index read a file elsewhere
            raise UserError(f"{path}: shard {shard} is a link (to {file.resolve()}); shards must be files beside the index")
        fmt = require_safe(file).format  # each shard is as untrusted as the index
        part = _safetensors(file) if fmt == "safetensors" else _torch_state(file)[0]
        state.update({k: v for k, v in part.items() if weight_map.get(k) == shard})
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise UserError(f"{path}: shards lack tensors the index names: {', '.join(missing[:SHOWN])}")
    return state


def read_state(path: Path, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict in the file (kind: torch, safetensors or sharded) and what else it said."""
    if kind == "safetensors":
        state, info = _safetensors(path), {}
    elif kind == "sharded":
        state, info = _sharded(path), {"sharded": True}
    else:
        state, info = _torch_state(path)
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                            for k, v in state.items()):
        raise UserError(f"{path} is not a state dict of tensors")
    return state, info


def check_dtypes(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Refuse complex weights; convert other floating types to float32 with a warning. Bool tensors
    pass here (a mask buffer, as attention masks are) and `fit_state` refuses one that would fill
    a weight."""
    out = {}
    converted = []
    for key, value in state.items():
        if value.dtype.is_complex:
            raise UserError(f"{path}: tensor {key} has dtype {str(value.dtype).replace('torch.', '')}; "
                            "a classifier's weights are real numbers")
        if value.is_floating_point() and value.dtype != torch.float32:
            converted.append(f"{key} ({str(value.dtype).replace('torch.', '')})")
            value = value.float()
        out[key] = value
    if converted:
        log.warning("%s: converted %d tensor(s) to float32: %s", path.name, len(converted), ", ".join(converted[:3]))
    return out


def _strip_prefix(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Drop a wrapper's key prefix (`model.`, `module.`) when that makes the keys fit."""
    if set(state) & expected:
        return state
    for prefix in PREFIXES:
        if all(k.startswith(prefix) for k in state):
            stripped = {k[len(prefix):]: v for k, v in state.items()}
            if set(stripped) & expected:
                return stripped
    return state


def build_fitting(build: Callable[[], nn.Module], state: dict[str, torch.Tensor], path: Path, arch: str) -> nn.Module:
    """`build()`, loaded with `state`. The architecture is first built on the meta device and
    compared with the file's tensors, so sizes from an untrusted metadata.json (100,000 classes,
    a 4096x4096 input to an MLP) cannot allocate gigabytes before the mismatch is found."""
    try:
        with torch.device("meta"):
            skeleton = build()
    except UserError:
        raise
    except Exception:  # noqa: BLE001  (code that cannot run on the meta device is built as is)
        skeleton = None
    if skeleton is not None:
        check_fits(skeleton, state, path, arch)
    model = build()
    fit_state(model, state, path, arch)
    return model


def check_fits(model: nn.Module, state: dict[str, torch.Tensor], path: Path, arch: str) -> dict[str, torch.Tensor]:
    """`state` with a wrapper's prefix dropped, or one UserError naming the first missing,
    unexpected and misshapen keys (shapes only: `model` may live on the meta device)."""
    own = model.state_dict()
    state = _strip_prefix(state, set(own))
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches (file vs model)", shapes)):
            if keys:
                more = f" (+{len(keys) - SHOWN} more)" if len(keys) > SHOWN else ""
                parts.append(f"{label}: {', '.join(keys[:SHOWN])}{more}")
        raise UserError(f"{path} does not fit architecture {arch!r}: {'; '.join(parts)}")
    return state


def fit_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path, arch: str) -> None:
    """Load `state` into `model`, or one UserError naming the first missing, unexpected and misshapen keys."""
    state = check_fits(model, state, path, arch)
    own = dict(model.state_dict())
    for key, value in state.items():
        if value.dtype == torch.bool and key in own and own[key].dtype != torch.bool:
            raise UserError(f"{path}: tensor {key} has dtype bool, where architecture {arch!r} has "
                            f"{str(own[key].dtype).replace('torch.', '')} (a classifier's weights are real numbers)")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"{path} does not fit architecture {arch!r}: {first_line(exc)}") from exc


def _loader(kind: str):
    def load(request: LoadRequest) -> tuple[nn.Module, dict[str, Any]]:
        from poisonguard.models.arch import build_from_spec, is_code

        state, info = read_state(request.path, kind)
        state = check_dtypes(state, request.path)
        meta = request.metadata
        arch = request.arch or meta.get("architecture")
        if meta.get("format") == "partition_ensemble":  # certify.ensemble.ENSEMBLE_FORMAT
            raise UserError(f"{request.path} is a partition ensemble (K models voting): `poisonguard certify "
                            "--poisoning` reads it; other commands take one model")
        if arch is None:
            from poisonguard.models.registry import ARCHITECTURES

            raise UserError(f"{request.path} holds weights only: name its architecture with --arch (a built-in: "
                            f"{', '.join(ARCHITECTURES.names())}; torchvision:NAME; timm:NAME; or your own "
                            "path/to/file.py:callable)")
        if request.num_classes is None or request.input_shape is None:
            raise UserError(f"{request.path}: the number of classes and input shape are unknown (no metadata.json)")
        trusted = request.arch is not None and request.trusted_arch
        kwargs = request.arch_kwargs if request.arch is not None else (meta.get("arch_kwargs") or {})
        if request.arch is None and is_code(arch):
            trusted = False  # metadata never chooses code to run
        model = build_fitting(lambda: build_from_spec(arch, num_classes=int(request.num_classes),
                                                      input_shape=request.input_shape, kwargs=kwargs, trusted=trusted),
                              state, request.path, arch)
        from poisonguard.models.arch import absolute_spec

        return model.eval(), {**info, "architecture": absolute_spec(arch), "arch_kwargs": dict(kwargs)}

    return load


def save(module: nn.Module, path: Path, example: torch.Tensor) -> None:
    from safetensors.torch import save_file

    from poisonguard.models.graph import FixedBatch

    if isinstance(module, FixedBatch):
        module = module.inner
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    seen: dict[int, str] = {}
    for k, v in list(state.items()):  # safetensors refuses shared storage (tied weights)
        if v.data_ptr() in seen and v.numel():
            state[k] = v.clone()
        seen[v.data_ptr()] = k
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))


STATE_DICT = register_format(ModelFormat("state_dict", "safetensors", ("torch-zip", "legacy-torch", "pickle"),
                                         _loader("torch"), save, needs_arch=True))
SAFETENSORS = register_format(ModelFormat("safetensors", "safetensors", ("safetensors",), _loader("safetensors"),
                                          save, needs_arch=True))
SHARDED = register_format(ModelFormat("sharded", "safetensors", ("sharded",), _loader("sharded"), save, needs_arch=True))
