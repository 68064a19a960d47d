"""Zip archives (torch.save, TorchScript, .pt2, .npz): structure, names, sizes and CRCs, streamed.

Different zip readers disagree on odd archives (Python's zipfile reads the central directory,
torch's miniz reader has its own rules), and an attacker picks whichever disagreement hides a
payload. So an archive is accepted only when it is plain: no data before the first entry, every
local header agreeing with its central-directory entry, no overlapping entries, no duplicate or
escaping names, no encryption or unknown flag bits, only stored or deflated members, and every
member's CRC right. CRCs are checked by streaming each member in blocks with a cap on the bytes
decompressed, so a deflate bomb costs a bounded amount of memory and time.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO

from poisonguard.filesafety.limits import LIMITS

BLOCK = 1 << 20
_KNOWN_FLAGS = 0x0008 | 0x0800 | 0x0002 | 0x0004  # data descriptor, UTF-8 names, deflate speed hints
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")


@dataclass
class ArchiveCheck:
    """An opened, checked archive: its members by name and what is wrong with it."""

    archive: zipfile.ZipFile | None
    names: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)

    def read(self, name: str, limit: int) -> bytes | None:
        """A member's bytes if it decompresses to at most `limit` bytes (else a finding and None)."""
        if self.archive is None:
            return None
        info = self.archive.getinfo(name)
        if info.file_size > limit:
            self.findings.append(f"{name}: {info.file_size} bytes, over the {limit}-byte limit for a member that is parsed")
            return None
        try:
            with self.archive.open(info) as member:
                data = member.read(limit + 1)
        except (zipfile.BadZipFile, OSError, zlib.error, RuntimeError, NotImplementedError) as exc:
            self.findings.append(f"{name}: cannot be read ({exc})")
            return None
        if len(data) > limit:
            self.findings.append(f"{name}: decompresses past the {limit}-byte limit")
            return None
        return data

    def close(self) -> None:
        if self.archive is not None:
            self.archive.close()


def is_zip(head: bytes) -> bool:
    return head[:4] == b"PK\x03\x04"


def bad_name(name: str) -> str | None:
    """Why a member name is refused (escaping, ambiguous between readers), or None."""
    if not name:
        return "an empty member name"
    if name.startswith("/") or name.startswith("\\") or (len(name) > 1 and name[1] == ":"):
        return f"absolute member name {name!r}"
    if "\\" in name or "\x00" in name:
        return f"member name with a backslash or NUL {name!r}"
    parts = name.rstrip("/").split("/")
    if ".." in parts:
        return f"member name that climbs out with '..' {name!r}"
    if "." in parts or "" in parts:
        return f"member name with './' or '//' {name!r}"
    return None


def check_archive(handle: BinaryIO, size: int) -> ArchiveCheck:
    """Open `path` as a zip and check its structure and every member; never raises."""
    try:
        archive = zipfile.ZipFile(handle)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error) as exc:
        return ArchiveCheck(None, findings=[f"not a readable zip archive ({exc})"])
    check = ArchiveCheck(archive)
    infos = archive.infolist()
    check.names = [info.filename for info in infos]
    findings = check.findings
    if len(infos) > LIMITS.zip_members:
        findings.append(f"{len(infos)} members, over the limit of {LIMITS.zip_members}")
        return check
    # torch's zip reader (miniz) finds members ignoring case, Python's zipfile does not: two names
    # equal but for case would let the checker read one and torch load the other
    folded = [n.lower() for n in check.names]
    if len(set(folded)) != len(folded):
        dupes = sorted({n for n, f in zip(check.names, folded) if folded.count(f) > 1})
        findings.append(f"duplicate member names (ignoring case, as torch's reader does) {dupes[:5]} "
                        "(readers disagree on which one counts)")
    total = 0
    spans: list[tuple[int, int, str]] = []
    for info in infos:
        name = info.filename
        problem = bad_name(name)
        if problem:
            findings.append(problem)
        if info.flag_bits & 0x1:
            findings.append(f"{name}: encrypted member")
        elif info.flag_bits & ~_KNOWN_FLAGS:
            findings.append(f"{name}: unknown zip flag bits 0x{info.flag_bits:04x}")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            findings.append(f"{name}: compression method {info.compress_type} (only stored and deflate are read)")
        total += info.file_size
        if info.compress_type == zipfile.ZIP_DEFLATED and info.file_size > LIMITS.ratio_floor:
            ratio = info.file_size / max(1, info.compress_size)
            if ratio > LIMITS.zip_ratio:
                findings.append(f"{name}: decompresses {ratio:.0f}x ({info.file_size} bytes from {info.compress_size}), "
                                f"over the ratio limit of {LIMITS.zip_ratio} (a decompression bomb)")
        spans.append((info.header_offset, info.header_offset + _LOCAL_HEADER.size + len(info.orig_filename.encode("utf-8", "replace")) + info.compress_size, name))
    if total > LIMITS.archive_bytes:
        findings.append(f"members decompress to {total} bytes, over the limit of {LIMITS.archive_bytes}")
    _check_layout(handle, infos, spans, size, findings)
    if not findings:
        _check_crcs(archive, infos, findings)
    return check


def _check_layout(handle: BinaryIO, infos: list[zipfile.ZipInfo], spans: list[tuple[int, int, str]], size: int,
                  findings: list[str]) -> None:
    """Local headers agree with the central directory; entries start at 0 and do not overlap."""
    spans.sort()
    if spans and spans[0][0] != 0:
        findings.append(f"{spans[0][0]} bytes before the first zip entry (a polyglot file)")
    for (_, end, name), (start, _, nxt) in zip(spans, spans[1:]):
        if start < end:
            findings.append(f"zip entries {name!r} and {nxt!r} overlap (a zip bomb or a reader confusion)")
            break
    for info in infos:
        try:
            handle.seek(info.header_offset)
            raw = handle.read(_LOCAL_HEADER.size)
            fields = _LOCAL_HEADER.unpack(raw)
        except (OSError, struct.error, ValueError):
            findings.append(f"{info.filename}: local header unreadable")
            continue
        magic, _, flags, method, _, _, _, _, _, name_len, _ = fields
        local_name = handle.read(name_len)
        if magic != b"PK\x03\x04":
            findings.append(f"{info.filename}: no local header where the directory points")
        elif method != info.compress_type or (flags & 0x1) != (info.flag_bits & 0x1):
            findings.append(f"{info.filename}: local header disagrees with the central directory (method/flags)")
        elif local_name != info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437", "replace"):
            findings.append(f"{info.filename}: local header names another file {local_name[:60]!r}")
        if info.header_offset + info.compress_size > size:
            findings.append(f"{info.filename}: claims data past the end of the file")


def _check_crcs(archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo], findings: list[str]) -> None:
    """Stream every member once; zipfile checks the CRC at its end. Bytes read are capped by its size."""
    for info in infos:
        if info.is_dir():
            continue
        read = 0
        try:
            with archive.open(info) as member:
                while True:
                    block = member.read(BLOCK)
                    if not block:
                        break
                    read += len(block)
                    if read > info.file_size:
                        findings.append(f"{info.filename}: decompresses past its declared size")
                        break
        except zipfile.BadZipFile as exc:
            findings.append(f"{info.filename}: {exc}")
        except (OSError, zlib.error, EOFError, RuntimeError, NotImplementedError, ValueError) as exc:
            findings.append(f"{info.filename}: cannot be decompressed ({type(exc).__name__}: {exc})")
        if read != info.file_size and not findings:
            findings.append(f"{info.filename}: {read} bytes, not the {info.file_size} the directory declares")
