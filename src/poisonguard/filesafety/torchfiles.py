"""torch.save files: the zip format (since torch 1.6), the legacy pickle sequence, raw pickles.

Every pickle member is walked by the allowlist (`pickles.walk_pickle`), and every tensor's
storage claim is checked against the bytes that back it: a record that claims 1e11 elements
makes the loader allocate them before it notices the record is short.
"""

from __future__ import annotations

import io
from typing import Any, BinaryIO

from poisonguard.filesafety.archives import ArchiveCheck
from poisonguard.filesafety.limits import LIMITS
from poisonguard.filesafety.pickles import TORCH_POLICY, PicklePolicy, walk_pickle

_ELEMENT_SIZE = {"Float": 4, "Double": 8, "Half": 2, "BFloat16": 2, "Long": 8, "Int": 4, "Short": 2, "Char": 1,
                 "Byte": 1, "Bool": 1, "ComplexFloat": 8, "ComplexDouble": 16, "Untyped": 1, "Typed": 1,
                 "QUInt8": 1, "QInt8": 1, "QInt32": 4, "QUInt4x2": 1, "QUInt2x4": 1}


def storage_bytes(pid: tuple[Any, ...]) -> tuple[str | None, int | None]:
    """(record key, claimed bytes) of a persistent id ('storage', torch.XStorage, key, location, numel[, view])."""
    if len(pid) < 5 or pid[0] != "storage":
        return None, None
    kind, key, numel = str(pid[1]), pid[2], pid[4]
    size = _ELEMENT_SIZE.get(kind.rsplit(".", 1)[-1].removesuffix("Storage"))
    if not isinstance(key, str) or not isinstance(numel, int) or size is None:
        return None, None
    return key, numel * size


def archive_prefix(names: list[str]) -> tuple[str, list[str]]:
    """The single top folder torch writes every member under, and findings if there is none."""
    tops = {name.split("/", 1)[0] for name in names}
    if len(tops) != 1 or any("/" not in name for name in names):
        return "", [f"members are not all under one top folder ({sorted(tops)[:4]})"]
    return tops.pop(), []


def check_torch_zip(check: ArchiveCheck, *, policy: PicklePolicy = TORCH_POLICY, label: str = "",
                    pickles: list[str] | None = None) -> list[str]:
    """Walk the archive's pickles (all `*.pkl` members unless `pickles` names them) and check storages."""
    findings: list[str] = []
    prefix, problems = archive_prefix(check.names)
    findings += problems
    # keyed and matched ignoring case, as torch's reader finds members (data.PKL is its data.pkl)
    sizes = {info.filename.lower(): info.file_size for info in check.archive.infolist()} if check.archive else {}
    folded = {n.lower() for n in check.names}
    members = pickles if pickles is not None else [n for n in check.names if n.lower().endswith(".pkl")]
    if pickles is None and f"{prefix}/data.pkl".lower() not in folded and not any(n.endswith("constants.pkl") for n in folded):
        findings.append(f"{label}no data.pkl: not a torch.save archive")
    for name in members:
        data = check.read(name, LIMITS.parsed_member)
        if data is None:
            continue
        report = walk_pickle(data, policy, context=f"{label}{name}")
        findings += report.findings
        folder = name[:-len(".pkl")] if name.lower().endswith(".pkl") else f"{prefix}/data"
        findings += _check_storages(report.storages, sizes, prefix, folder, f"{label}{name}")
    return findings


def _check_storages(storages: list[tuple[Any, ...]], sizes: dict[str, int], prefix: str, folder: str,
                    context: str) -> list[str]:
    """Each storage's claim against its record: `<pickle name without .pkl>/<key>` (data.pkl -> data/0)."""
    findings = []
    for pid in storages:
        key, claimed = storage_bytes(pid)
        if key is None:
            findings.append(f"{context}: a persistent id that is not a tensor storage ({str(pid)[:80]})")
            continue
        records = [f"{folder}/{key}".lower(), f"{prefix}/{key}".lower()]
        size = next((sizes[r] for r in records if r in sizes), None)
        if size is None:
            findings.append(f"{context}: storage {key!r} has no record in the archive")
        elif size == 0 and claimed <= LIMITS.parsed_member:
            continue  # TorchScript writes traced example inputs as empty records (never read unless asked)
        elif claimed > size:
            findings.append(f"{context}: storage {key!r} claims {claimed} bytes, its record holds {size}")
    return findings


def check_legacy(handle: BinaryIO, size: int) -> list[str]:
    """The legacy format: pickled magic, protocol, system info, the object, its storage keys; then raw data.

    The pickles are walked straight from the file (they come first), so a large file is not read whole.
    """
    findings: list[str] = []
    handle.seek(0)
    stream = _Bounded(handle, size)
    claimed = 0
    for part in ("magic number", "protocol version", "system info", "object", "storage keys"):
        report = walk_pickle(stream, TORCH_POLICY, context=f"legacy {part}")
        findings += report.findings
        if report.findings:
            break
        for pid in report.storages:
            key, nbytes = storage_bytes(pid)
            if key is None:
                findings.append(f"legacy object: a persistent id that is not a tensor storage ({str(pid)[:80]})")
            else:
                claimed += nbytes
    if claimed > size:
        findings.append(f"storages claim {claimed} bytes, the file holds {size} (a memory bomb)")
    return findings


class _Bounded:
    """A file whose reads never ask for more than what is left (a pickle's length claim cannot make
    the reader allocate past the file's size)."""

    def __init__(self, handle: BinaryIO, size: int) -> None:
        self.handle, self.size = handle, size

    def read(self, n: int = -1) -> bytes:
        left = max(0, self.size - self.handle.tell())
        return self.handle.read(left if n is None or n < 0 else min(n, left))

    def readline(self) -> bytes:
        return self.handle.readline(1 << 16)

    def tell(self) -> int:
        return self.handle.tell()


def check_raw_pickle(handle: BinaryIO, size: int) -> list[str]:
    if size > LIMITS.parsed_member:
        return [f"a {size}-byte pickle, over the {LIMITS.parsed_member}-byte limit for a member that is parsed"]
    handle.seek(0)
    return walk_pickle(handle.read(), TORCH_POLICY).findings


def check_torch_bytes(data: bytes, *, label: str, depth: int) -> list[str]:
    """A torch.save payload inside another archive (a .pt2 weight, sample inputs): any torch format."""
    from poisonguard.filesafety.archives import check_archive
    from poisonguard.filesafety.formats import LEGACY_MAGIC

    if depth > LIMITS.nesting:
        return [f"{label}archives nested deeper than {LIMITS.nesting}"]
    stream = io.BytesIO(data)
    if data[:4] == b"PK\x03\x04":
        check = check_archive(stream, len(data))
        findings = [f"{label}{f}" for f in check.findings]
        if check.archive is not None and not findings:
            findings += check_torch_zip(check, label=label)
        check.close()
        return findings
    if data.startswith(LEGACY_MAGIC):
        return [f"{label}{f}" for f in check_legacy(stream, len(data))]
    return [f"{label}{f}" for f in walk_pickle(data).findings]
