"""Model file formats: one file each, registered in `FORMATS`.

A format knows how to load its files into an eager `nn.Module` (see `models.graph` for the
graph formats) and how to write a module back in the same format, so a repaired model can be
used wherever the original was. Which format a file is in is decided by its bytes
(`poisonguard.filesafety`), never by its name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from poisonguard.errors import UserError
from poisonguard.registry import Registry


@dataclass
class LoadRequest:
    """What the caller knows about a model file besides its bytes."""

    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)
    arch: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    trusted_arch: bool = False  # the arch was typed by the user (may name the user's code)
    num_classes: int | None = None
    input_shape: Sequence[int] | None = None

    def example(self, batch: int = 2) -> torch.Tensor | None:
        """A seeded input batch of the model's shape (None when the shape is unknown)."""
        if self.input_shape is None:
            return None
        return torch.rand(batch, *self.input_shape, generator=torch.Generator().manual_seed(0))


@dataclass(frozen=True)
class ModelFormat:
    """One model file format.

    name: recorded in reports and metadata (`torchscript`, `torch.export`, `onnx`, `state_dict`, ...).
    ext: the extension a repaired model is written with (DIR/model.<ext>).
    sniffed: the `filesafety.sniff_format` names this format loads ("sharded": a *.index.json).
    load(request) -> (eager module, metadata additions).
    save(module, path, example) writes `module` in this format (the example fixes input shapes).
    needs_arch: the file holds weights only; the architecture comes from --arch or metadata.
    """

    name: str
    ext: str
    sniffed: tuple[str, ...]
    load: Callable[[LoadRequest], tuple[nn.Module, dict[str, Any]]]
    save: Callable[[nn.Module, Path, torch.Tensor], None]
    needs_arch: bool = False


FORMATS: Registry[ModelFormat] = Registry("model format")


def register_format(fmt: ModelFormat) -> ModelFormat:
    FORMATS.register(fmt.name)(fmt)
    return fmt


def format_for(sniffed: str, path: Path) -> ModelFormat:
    """The registered format that loads files `filesafety` recognised as `sniffed`."""
    for name in FORMATS.names():
        fmt = FORMATS.get(name)
        if sniffed in fmt.sniffed:
            return fmt
    known = sorted({s for n in FORMATS.names() for s in FORMATS.get(n).sniffed})
    raise UserError(f"cannot read model file {path}: unknown format ({sniffed}); "
                    f"poisonguard reads {', '.join(known)}")


def first_line(exc: BaseException) -> str:
    """One line of an exception's message (TorchScript and export errors span many): the first,
    or for the TorchScript interpreter's "The following operation failed" the last, which says
    what failed (after a TorchScript traceback)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return (lines[-1] if lines[0].startswith("The following operation failed") else lines[0])[:300]


from poisonguard.models.formats import exported, onnx, torchscript, weights  # noqa: E402,F401  (register)
