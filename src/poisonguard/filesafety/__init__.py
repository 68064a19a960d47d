"""Static file safety: what a file is (by its bytes) and whether loading it could run code.

Nothing here loads or runs the file. `poisonguard.models` calls `require_safe` before torch,
safetensors, onnx or numpy touch a model file (and `check_loaded_torchscript` right after
`torch.jit.load`); `poisonguard inspect-file` and `audit` report `inspect_file`'s findings.
The policy is allowlist-first: a pickle global, operator, archive member or header field that
is not known to be harmless makes the file unsafe. One module per concern: `formats` (what a
file is), `archives` (zip structure, CRCs, bombs), `pickles` (the opcode walk), `torchfiles`,
`torchscript`, `export`, `safetensors`, `numpy`, `onnx`, `sandbox` (the second wall).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from poisonguard.errors import UnsafeFileError, UserError
from poisonguard.filesafety.formats import FORMATS, sniff

log = logging.getLogger(__name__)

__all__ = ["FORMATS", "FileSafety", "sniff_format", "inspect_file", "require_safe", "check_loaded_torchscript"]

# Paths whose "files" are devices or kernel views: reading them hangs, leaks or never ends.
_SPECIAL_ROOTS = ("/proc", "/sys", "/dev")
HASH_BLOCK = 1 << 20


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


def _regular_file(path: str | Path) -> Path:
    """The path, if it is a regular file outside /proc, /sys and /dev (symlinks resolved); else UserError."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"file not found: {path}")
    real = path.resolve()
    if len(real.parts) > 1 and f"/{real.parts[1]}" in _SPECIAL_ROOTS:
        raise UserError(f"{path} points into /{real.parts[1]}: not a model file")
    if not real.is_file():
        raise UserError(f"{path} is not a regular file")
    return path


def sniff_format(path: str | Path) -> str:
    """What `path` is, from its bytes, never its name.

    One of: "torch-zip" (a torch.save zip, e.g. a state dict), "torchscript" (torch.jit.save),
    "torch.export" (a .pt2 archive), "legacy-torch" (torch.save's pre-1.6 pickle sequence),
    "pickle" (a bare pickle), "safetensors", "onnx", "npz", "npy", "unknown".
    """
    path = _regular_file(path)
    with open(path, "rb") as handle:
        return sniff(handle, path.stat().st_size)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def inspect_file(path: str | Path) -> FileSafety:
    """Check `path` without loading it; never raises for a hostile file (the verdict says so).

    Raises `UserError` only when there is no readable regular file at `path`.
    """
    path = _regular_file(path)
    digest, fmt = "", "unknown"
    try:
        digest = _sha256(path)
        size = path.stat().st_size
        with open(path, "rb") as handle:
            fmt = sniff(handle, size)
            findings = _CHECKS[fmt](handle, size, path)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except Exception as exc:  # a scanner bug must not pass a file: fail closed
        log.debug("file safety check crashed on %s", path, exc_info=True)
        return FileSafety(str(path), digest, fmt, False,
                          (f"the safety check could not finish ({type(exc).__name__}: {str(exc)[:120]})",))
    return FileSafety(str(path), digest, fmt, not findings, tuple(findings))


TRIAL_ENV = "POISONGUARD_TRIAL_LOAD"
CODE_FORMATS = ("torchscript", "torch.export")


def require_safe(path: str | Path, *, trial: bool | None = None, input_shape: list[int] | None = None,
                 timeout: float = 60.0) -> FileSafety:
    """`inspect_file`, raising `UnsafeFileError` (CLI exit 1) when the file is unsafe.

    A file of no format poisonguard reads (format "unknown": text, a truncated or foreign zip)
    raises `UserError` (exit 2) instead: no loader would open it, so it is the user's mistake.

    With `trial` (default: the environment variable POISONGUARD_TRIAL_LOAD=1), a file that
    passed and carries code (TorchScript, .pt2) is also loaded once in an isolated process
    (`sandbox.run_isolated`), its graphs checked and one probe forward run (on `input_shape`
    when given, else the .pt2's own example inputs); a hang past `timeout`, a crash or a refused
    graph is unsafe too. It costs a fresh interpreter and `import torch` (about 2-4 s), hence opt-in.
    """
    report = inspect_file(path)
    if report.format == "unknown":  # nothing any loader would read: the user's mistake, not a finding
        raise UserError(f"{report.path} is not a model file poisonguard reads: {report.findings[0]}")
    if not report.safe:
        raise UnsafeFileError(report.path, report.findings)
    if trial is None:
        trial = os.environ.get(TRIAL_ENV, "0") not in ("", "0")
    if trial and report.format in CODE_FORMATS:
        findings = _trial_findings(report, input_shape, timeout)
        if findings:
            raise UnsafeFileError(report.path, findings)
    return report


def _trial_findings(report: FileSafety, input_shape: list[int] | None, timeout: float) -> list[str]:
    from poisonguard.filesafety.sandbox import SandboxError, run_isolated, trial_load

    try:
        return list(run_isolated(trial_load, str(Path(report.path).resolve()), report.format, input_shape,
                                 timeout=timeout, cpu_seconds=int(timeout) + 5))
    except SandboxError as exc:
        return [f"trial load in an isolated process: {exc}"]
    except RuntimeError as exc:
        # A file that fails only in the isolated child (it may look for the limits) must not then
        # be loaded here unprotected: the trial is the proof, and it did not pass.
        return [f"the trial load in an isolated process failed ({str(exc)[:200]}); not loaded in this process"]


def check_loaded_torchscript(module: Any) -> list[str]:
    """Findings for a module that `torch.jit.load` returned (see `torchscript.check_loaded_torchscript`)."""
    from poisonguard.filesafety.torchscript import check_loaded_torchscript as check

    return check(module)


def _lazy(module: str, function: str) -> Callable[..., list[str]]:
    """A checker imported when first used, so `import poisonguard.filesafety` stays light (no torch, no onnx)."""
    def run(*args):
        from importlib import import_module

        return getattr(import_module(f"poisonguard.filesafety.{module}"), function)(*args)
    return run


def _archive(check_members: Callable[[Any], list[str]]) -> Callable[[Any, int, Path], list[str]]:
    """Zip structure first (archives.check_archive); the members' own checks only on a sound archive."""
    def run(handle, size, path):
        from poisonguard.filesafety.archives import check_archive

        archive = check_archive(handle, size)
        try:
            if archive.archive is None or archive.findings:
                return archive.findings
            return check_members(archive) + archive.findings
        finally:
            archive.close()
    return run


def _stream(check: Callable[..., list[str]], *, with_path: bool = False) -> Callable[[Any, int, Path], list[str]]:
    def run(handle, size, path):
        handle.seek(0)
        return check(handle, size, path) if with_path else check(handle, size)
    return run


def _unknown(handle, size, path) -> list[str]:
    from poisonguard.filesafety.archives import is_zip

    handle.seek(0)
    if is_zip(handle.read(4)):
        return ["a zip archive that is none of torch.save, TorchScript, torch.export or .npz"]
    return ["not a model format poisonguard reads (recognised by its bytes: " + ", ".join(FORMATS[:-1]) + ")"]


_CHECKS: dict[str, Callable[[Any, int, Path], list[str]]] = {
    "torch-zip": _archive(_lazy("torchfiles", "check_torch_zip")),
    "torchscript": _archive(_lazy("torchscript", "check_torchscript")),
    "torch.export": _archive(_lazy("export", "check_export")),
    "npz": _archive(_lazy("numpy", "check_npz")),
    "legacy-torch": _stream(_lazy("torchfiles", "check_legacy")),
    "pickle": _stream(_lazy("torchfiles", "check_raw_pickle")),
    "safetensors": _stream(_lazy("safetensors", "check_safetensors")),
    "onnx": _stream(_lazy("onnx", "check_onnx"), with_path=True),
    "npy": _stream(_lazy("numpy", "check_npy")),
    "unknown": _unknown,
}
