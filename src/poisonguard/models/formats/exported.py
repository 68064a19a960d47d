"""`torch.export` programs (`.pt2`, `torch.export.save`).

Loaded with `torch.export.load` after the static file-safety check (the archive can hold
pickles, which `filesafety` refuses), then `ExportedProgram.module()` made eager by
`models.graph.from_exported` (its own module refuses `eval()` and never calls layer modules,
so hooks would not fire). A program exported for one batch size is run in chunks of that size.
Written back with `torch.export.export` (batch dimension dynamic) and `torch.export.save`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from poisonguard.errors import UserError
from poisonguard.models.formats import LoadRequest, ModelFormat, first_line, register_format
from poisonguard.models.graph import FixedBatch, from_exported, quiet_torch, static_batch
from poisonguard.utils import atomic_path


def load(request: LoadRequest) -> tuple[nn.Module, dict[str, Any]]:
    try:
        with quiet_torch():
            program = torch.export.load(str(request.path))
            module = from_exported(program)
    except Exception as exc:  # torch.export raises many types on a bad archive, and logs a traceback
        raise UserError(f"cannot load torch.export program {request.path}: {first_line(exc)}") from exc
    batch = static_batch(module)
    if batch is not None:
        return FixedBatch(module, batch), {"eager": True, "static_batch": batch}
    return module, {"eager": True}


def save(module: nn.Module, path: Path, example: torch.Tensor) -> None:
    if isinstance(module, FixedBatch):
        module, example = module.inner, example[:1].expand(module.batch, *example.shape[1:]).clone()
        dynamic = None
    else:
        dynamic = ({0: torch.export.Dim.AUTO},)
    with quiet_torch():
        program = torch.export.export(module.eval(), (example,), dynamic_shapes=dynamic)
        with atomic_path(path) as tmp:
            torch.export.save(program, str(tmp))


FORMAT = register_format(ModelFormat("torch.export", "pt2", ("torch.export",), load, save))
