"""Static file safety: what a file is (by its bytes) and whether loading it could run code.

Nothing here loads or runs the file. `poisonguard.models` calls `require_safe` before torch,
safetensors, onnx or numpy touch a model file; `poisonguard inspect-file` and `audit` report
`inspect_file`'s findings.

INTERFACE STUB (to be replaced by the real allowlist-first scanner; see issue 13 / 18).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from poisonguard.errors import UnsafeFileError


@dataclass(frozen=True)
class FileSafety:
    """The verdict on one file: its format (recognised by bytes) and what makes it unsafe."""

    path: str
    sha256: str
    format: str
    safe: bool
    findings: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "format": self.format,
                "file_safety": "safe" if self.safe else "unsafe", "file_findings": list(self.findings)}


def sniff_format(path: str | Path) -> str:
    """One of: zip-torch, torchscript, torch.export, legacy-torch, pickle, safetensors, onnx, npz, npy, unknown."""
    raise NotImplementedError


def inspect_file(path: str | Path) -> FileSafety:
    """Check `path` without loading it; never raises for a hostile file (the verdict says so)."""
    raise NotImplementedError


def require_safe(path: str | Path) -> FileSafety:
    """`inspect_file`, raising `UnsafeFileError` (CLI exit 1) when the file is unsafe."""
    report = inspect_file(path)
    if not report.safe:
        raise UnsafeFileError(report.path, report.findings)
    return report
