"""The model handle: what each kind of module supports, so callers never guess.

Every model file is loaded as an eager module where its format allows (`models.graph`), so
most code just uses `nn.Module`. What reaches the library from elsewhere (the Python API,
a ScriptModule the converter could not handle, `ExportedProgram.module()`) goes through these
functions instead of `copy.deepcopy`, `.eval()` and hooks:

| kind | copy | eval/train | layer hooks | trainable parameters |
|---|---|---|---|---|
| eager `nn.Module` (incl. converted graphs) | deepcopy | yes | yes | yes |
| TorchScript `ScriptModule` | save/load in memory (a deepcopy has non-leaf parameters) | yes | no | yes |
| `ExportedProgram.module()` | deepcopy | no (its graph is fixed) | no (layers are not called) | yes |

`LoadedModel` is the handle for a model read from a file: the module, its format, and
`save_like`, which writes a (repaired) module back in that format.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from poisonguard.errors import UserError
from poisonguard.models.fold import fold_batch_norms
from poisonguard.models.layout import use_channels_last
from poisonguard.models.graph import FixedBatch, from_exported, from_torchscript, is_export_module, lift_layers
from poisonguard.models.wrappers import InputAdapter

log = logging.getLogger(__name__)


def module_kind(model: Any) -> str:
    """`eager`, `torchscript`, `export` (ExportedProgram.module()) or `program` (an ExportedProgram)."""
    if isinstance(model, torch.jit.ScriptModule):
        return "torchscript"
    if isinstance(model, nn.Module):
        return "export" if is_export_module(model) else "eager"
    if isinstance(model, torch.export.ExportedProgram):
        return "program"
    raise UserError(f"expected a torch.nn.Module, got {type(model).__name__}")


def supports_hooks(model: nn.Module) -> bool:
    """Whether forward hooks on the model's submodules fire when it runs."""
    return module_kind(model) == "eager"


def copy_module(model: nn.Module) -> nn.Module:
    """An independent copy with leaf parameters."""
    if module_kind(model) == "torchscript":
        buffer = io.BytesIO()
        torch.jit.save(model, buffer)
        buffer.seek(0)
        return torch.jit.load(buffer, map_location="cpu")
    return copy.deepcopy(model)


def set_eval(model: nn.Module) -> nn.Module:
    """`model.eval()` where the module supports it (an export module's graph is already fixed)."""
    if module_kind(model) != "export":
        model.eval()
    return model


def frozen_copy(model: nn.Module, device: torch.device, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """An eval-mode copy on `device` with gradients off; the caller's model is untouched.

    An eager copy has its batch norms folded into the convolutions before them (`models.fold`)
    and, given the `input_shape` of an image, a channels-last layout where the model computes
    the same with it (`models.layout`): the same function to float rounding, faster for the
    detectors that run it thousands of times.
    """
    if module_kind(model) == "export":
        model = lift_layers(copy.deepcopy(model))  # lifting shares the parameters: copy them first
    else:
        model = copy_module(model)
    model = set_eval(model.to(device))
    for p in model.parameters():
        p.requires_grad_(False)
    if module_kind(model) == "eager":
        fold_batch_norms(model)
        if input_shape is not None:
            use_channels_last(model, tuple(input_shape), device)
    return model


def as_eager(model: Any, example: torch.Tensor | None = None) -> nn.Module:
    """An eager module computing what `model` computes (itself when it already is one).

    ScriptModules need an `example` input (N >= 1) to be converted; without one, or when
    torch's converter fails, the ScriptModule is returned (forward and gradients still work).
    """
    kind = module_kind(model)
    if kind == "eager":
        return model
    if kind in ("export", "program"):
        return from_exported(model)
    if example is None:
        return model
    try:
        return from_torchscript(model, example)
    except Exception as exc:  # the converter supports most but not all TorchScript
        warn_unconvertible(model, exc)
        return model


# Repair methods that read or change a layer's activations through forward hooks, which a
# TorchScript module torch cannot convert to an eager one does not run; and those that do not.
HOOK_METHODS = "fine-pruning, wild, and unlearn's prune and filter modes"
HOOKLESS_METHODS = "--method refit and --method unlearn (its default mode)"
_warned: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


def warn_unconvertible(model: nn.Module, exc: BaseException) -> None:
    """One warning per module (the loader and the repair both try to convert it)."""
    if model in _warned:
        return
    _warned.add(model)
    log.warning("TorchScript model kept as is (torch cannot convert it: %s): %s need its layers' activations and "
                "cannot work on it; %s can", str(exc).splitlines()[0][:200], HOOK_METHODS, HOOKLESS_METHODS)


def hooks_or_raise(model: nn.Module, what: str) -> None:
    """One clear line when `what` needs layer hooks the model does not support."""
    if not supports_hooks(model):
        raise UserError(f"{what} needs the activations of the model's layers, which this "
                        f"{module_kind(model)} module does not expose (torch could not convert it to an eager "
                        f"module); {HOOKLESS_METHODS} work on it, or give the model's weights with --arch")


def unwrap(model: nn.Module) -> nn.Module:
    """The user's own module inside poisonguard's input adapter and batch chunking."""
    while isinstance(model, (InputAdapter, FixedBatch)):
        model = model.inner
    return model


@dataclass
class LoadedModel:
    """A model read from a file (eval mode, CPU), what is known about it, and how to write it back."""

    model: nn.Module
    format: str
    sha256: str
    metadata: dict[str, Any] = field(default_factory=dict)
    path: str | None = None

    @property
    def classes(self) -> list[str] | None:
        return self.metadata.get("classes")

    @property
    def input_shape(self) -> list[int] | None:
        return self.metadata.get("input_shape")

    @property
    def architecture(self) -> str | None:
        return self.metadata.get("architecture")

    def save_like(self, model: nn.Module, folder: str | Path, *, classes: Sequence[str], input_shape: Sequence[int],
                  training: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write `model` (e.g. the repaired copy of this one) as FOLDER/model.<ext> in this model's format.

        Returns the metadata written beside it (with `path`). The input file is never touched.
        """
        return save_in_format(model, folder, fmt=self.format, classes=classes, input_shape=input_shape,
                              source=self, training=training, extra=extra)


def save_in_format(model: nn.Module, folder: str | Path, *, fmt: str, classes: Sequence[str], input_shape: Sequence[int],
                   source: LoadedModel | None = None, training: dict[str, Any] | None = None,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """FOLDER/model.<ext> in format `fmt` plus metadata.json (architecture, classes, shape, adapter, sha256)."""
    from poisonguard import __version__
    from poisonguard.models.files import metadata_path
    from poisonguard.models.formats import FORMATS
    from poisonguard.utils import atomic_write_text, sha256_file

    spec = FORMATS.get(fmt)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"model.{spec.ext}"
    if source is not None and source.path is not None and Path(source.path).resolve() == path.resolve():
        raise UserError(f"{path} is the input model; choose another --out")
    adapter = model if isinstance(model, InputAdapter) else None
    inner = model.inner if adapter is not None else model
    shape = [int(s) for s in input_shape]
    if adapter is not None and adapter.size is not None:
        shape = [shape[0], *adapter.size]
    example = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0))
    inner = copy_module(inner).cpu()
    set_eval(inner)
    try:
        spec.save(inner, path, example)
    except UserError:
        raise
    except Exception as exc:  # exporters fail in many ways on unusual modules
        raise UserError(f"cannot write the model back as {fmt}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__}") from exc
    src_meta = source.metadata if source is not None else {}
    meta: dict[str, Any] = {
        "tool": "poisonguard", "version": __version__, "format": spec.name if not spec.needs_arch else "safetensors",
        "num_classes": len(classes), "classes": list(classes), "input_shape": [int(s) for s in input_shape],
    }
    if spec.needs_arch:
        meta["architecture"] = src_meta.get("architecture")
        if src_meta.get("arch_kwargs"):
            meta["arch_kwargs"] = src_meta["arch_kwargs"]
    if adapter is not None:
        meta.update(adapter.describe())
    meta.update({"file": path.name, "sha256": sha256_file(path), "training": training or {}, **(extra or {})})
    atomic_write_text(metadata_path(path), json.dumps(meta, indent=2))
    return {**meta, "path": str(path)}
