"""TorchScript archives (`torch.jit.save` of a traced or scripted module).

Loaded with `torch.jit.load` after the static file-safety check, checked again as loaded
(`filesafety.check_loaded_torchscript`), then turned into an eager module with torch's
TorchScript-to-export converter (`models.graph.from_torchscript`) so hooks, copies and
training work. When the converter cannot handle the module, the ScriptModule itself is used:
forward passes and input gradients work, layer hooks do not (`models.handle` says so).
Written back with `torch.jit.trace` of the repaired eager module.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from poisonguard.errors import UnsafeFileError, UserError
from poisonguard.models.formats import LoadRequest, ModelFormat, first_line, register_format
from poisonguard.models.graph import from_torchscript, quiet_torch
from poisonguard.utils import atomic_path

log = logging.getLogger(__name__)


def load(request: LoadRequest) -> tuple[nn.Module, dict[str, Any]]:
    from poisonguard import filesafety

    try:
        with quiet_torch():
            module = torch.jit.load(str(request.path), map_location="cpu")
    except Exception as exc:  # TorchScript raises RuntimeError and friends, over many lines
        raise UserError(f"cannot load TorchScript file {request.path}: {first_line(exc)}") from exc
    findings = filesafety.check_loaded_torchscript(module)  # before anything in it is called
    if findings:
        raise UnsafeFileError(str(request.path), findings)
    module.eval()
    example = request.example()
    if example is None or not _accepts(module, example):  # the command then says why, in one line
        return module, {"eager": False}
    try:
        return from_torchscript(module, example), {"eager": True}
    except Exception as exc:  # the converter supports most but not all TorchScript
        from poisonguard.models.handle import warn_unconvertible

        warn_unconvertible(module, exc)
        return module, {"eager": False}


def save(module: nn.Module, path: Path, example: torch.Tensor) -> None:
    with torch.no_grad(), quiet_torch():
        traced = module if isinstance(module, torch.jit.ScriptModule) else torch.jit.trace(module.eval(), example, check_trace=False)
    with atomic_path(path) as tmp, quiet_torch():
        torch.jit.save(traced, str(tmp))


FORMAT = register_format(ModelFormat("torchscript", "pt", ("torchscript",), load, save))


def _accepts(module: nn.Module, example: torch.Tensor) -> bool:
    """Whether the module runs on inputs like `example` (a 3-channel model on grey images does not:
    converting it would fail too, and its warning would only hide the reason)."""
    try:
        with torch.no_grad(), quiet_torch():
            module(example)
    except Exception:
        return False
    return True
