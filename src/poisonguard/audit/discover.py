"""Which files an audit covers: every model file under a folder (recognised by its bytes,
not its name; an unrecognised file is included only when its name says model), or the lines of a manifest that names each file with its own --arch / --data.

Manifest formats (relative paths resolve against the manifest's folder):
- JSON lines (`.jsonl`, `.json`, or a first character `{`): one object per line,
  `{"path": "zoo/a.pt", "arch": "mnist_cnn", "data": "mnist5k"}`; `arch` and `data` optional.
- CSV (anything else): a header row naming `path` and optionally `arch`, `data`.
Blank lines and lines starting with `#` are skipped. A missing file or a bad line is a
`UserError` naming the line.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from poisonguard.errors import UserError

log = logging.getLogger(__name__)

# Formats `sniff_format` names that hold arrays only: inspected (an .npy object array is a
# pickle), nothing to scan. Every other recognised format is a model file: inspected, then scanned.
ARRAY_FORMATS = frozenset({"npz", "npy"})
UNKNOWN = "unknown"
# A file whose bytes are not recognised is still audited when its name says it is a model
# (a truncated or disguised model is a finding for the file check, not something to skip).
MODEL_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".onnx", ".pt2", ".pkl", ".pickle", ".jit"})
MANIFEST_KEYS = ("path", "arch", "data")


@dataclass(frozen=True)
class AuditItem:
    """One file to audit: its path, the format its bytes show, and the manifest's per-model options."""

    path: str
    format: str
    arch: str | None = None
    data: str | None = None

    @property
    def is_model(self) -> bool:
        return self.format not in ARRAY_FORMATS


def _sniff(path: Path) -> str:
    from poisonguard.filesafety import sniff_format

    try:
        return sniff_format(path)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from exc


def discover(target: str | os.PathLike, *, exclude: str | os.PathLike | None = None) -> list[AuditItem]:
    """The files to audit under folder `target`, or those a manifest file `target` lists.

    `exclude` (the audit's own output folder) is never searched. UserError when nothing is found.
    """
    target = Path(target).expanduser()
    if not target.exists():
        raise UserError(f"{target} does not exist: give a folder of model files or a manifest")
    items = _from_folder(target, exclude) if target.is_dir() else _from_manifest(target)
    if not items:
        raise UserError(f"no model files found in {target}" + (" (nothing recognised by its bytes)" if target.is_dir() else ""))
    return items


def _from_folder(root: Path, exclude) -> list[AuditItem]:
    """Model files under `root`, as absolute paths (Ray workers may start in another folder).

    A linked file is followed when it ends at a regular file and its name says model (a
    Hugging Face cache snapshot links pytorch_model.bin to ../../blobs/<hash>), or when it stays
    under `root`; other links, and linked folders (they could loop), are skipped and counted.
    """
    root = Path(os.path.abspath(root))
    inside = root.resolve()
    skip = Path(exclude).expanduser().resolve() if exclude is not None else None
    items, skipped = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        skipped += [str(here / d) for d in dirnames if (here / d).is_symlink()]
        # The output folder holds our own reports; linked folders could loop.
        dirnames[:] = sorted(d for d in dirnames if (here / d).resolve() != skip and not (here / d).is_symlink())
        for name in sorted(filenames):
            path = here / name
            if path.is_symlink() and not _followed(path, inside):
                skipped.append(str(path))
                continue
            if not path.is_file():
                continue
            fmt = _sniff(path)
            if fmt != UNKNOWN or path.suffix.lower() in MODEL_SUFFIXES:
                items.append(AuditItem(str(path), fmt))
    if skipped:
        log.warning("audit: %d link(s) skipped (a linked folder, or a link to a file that neither lies under %s nor "
                    "is named as a model): %s", len(skipped), root, ", ".join(skipped[:5]))
    return items


def _followed(link: Path, inside: Path) -> bool:
    try:
        target = link.resolve()
        if not target.is_file():  # dangling, a device, a FIFO, a folder
            return False
    except (OSError, RuntimeError):  # a loop of links (RuntimeError before Python 3.13)
        return False
    return target.is_relative_to(inside) or link.suffix.lower() in MODEL_SUFFIXES


def _from_manifest(manifest: Path) -> list[AuditItem]:
    try:
        text = manifest.read_text(encoding="utf-8-sig")  # Excel's "CSV UTF-8" starts with a byte-order mark
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read manifest {manifest}: {exc}") from exc
    first = next((line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")), "")
    jsonl = manifest.suffix.lower() in (".jsonl", ".json", ".ndjson") or first.startswith("{")
    entries = _jsonl_entries(manifest, text) if jsonl else _csv_entries(manifest, text)
    items = []
    for lineno, entry in entries:
        where = f"{manifest}:{lineno}"
        raw = entry.get("path")
        if not isinstance(raw, str) or not raw.strip():
            raise UserError(f"{where}: each line needs a 'path'")
        path = Path(raw.strip()).expanduser()
        path = Path(os.path.abspath(path if path.is_absolute() else manifest.parent / path))
        if not path.is_file():
            raise UserError(f"{where}: model file not found: {path}")
        for key in ("arch", "data"):
            if entry.get(key) is not None and not isinstance(entry[key], str):
                raise UserError(f"{where}: '{key}' must be a string")
        data = (entry.get("data") or "").strip() or None
        if data is not None and (manifest.parent / data).exists() and not Path(data).is_absolute():
            data = os.path.abspath(manifest.parent / data)
        # A listed file is audited whatever its bytes show: the file check says what it is.
        items.append(AuditItem(str(path), _sniff(path), (entry.get("arch") or "").strip() or None, data))
    return items


def _jsonl_entries(manifest: Path, text: str):
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise UserError(f"{manifest}:{lineno}: not a JSON object: {exc}") from exc
        if not isinstance(entry, dict):
            raise UserError(f"{manifest}:{lineno}: each line must be a JSON object with 'path'")
        unknown = sorted(set(entry) - set(MANIFEST_KEYS))
        if unknown:
            raise UserError(f"{manifest}:{lineno}: unknown key(s) {', '.join(unknown)}; known: {', '.join(MANIFEST_KEYS)}")
        yield lineno, entry


def _csv_entries(manifest: Path, text: str):
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        return
    header = [h.strip().lower() for h in next(csv.reader([lines[0][1]]))]
    if "path" not in header or any(h not in MANIFEST_KEYS for h in header) or len(set(header)) != len(header):
        raise UserError(f"{manifest}:{lines[0][0]}: the CSV header must name 'path' and optionally 'arch', 'data', "
                        f"got {','.join(header)}")
    for lineno, line in lines[1:]:
        row = next(csv.reader(io.StringIO(line)))
        if len(row) != len(header):
            raise UserError(f"{manifest}:{lineno}: expected {len(header)} fields ({','.join(header)}), got {len(row)}")
        yield lineno, dict(zip(header, row))
