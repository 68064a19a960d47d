"""numpy files: `.npy` arrays and `.npz` archives of them.

An object array (dtype `O`, or a structured dtype holding one) is a pickle that `np.load` runs
when pickles are allowed; poisonguard never allows them, and the scanner calls such a file unsafe
(and walks the pickle, to report what it imports). Otherwise the header is parsed as a literal
(never evaluated) and the claimed shape must match the bytes present and the element limit.
"""

from __future__ import annotations

import ast
import math
from typing import BinaryIO

import numpy as np

from poisonguard.filesafety.archives import ArchiveCheck
from poisonguard.filesafety.formats import NPY_MAGIC
from poisonguard.filesafety.limits import LIMITS
from poisonguard.filesafety.pickles import walk_pickle

MAX_HEADER = 1 << 16


def check_npy(handle: BinaryIO, size: int, label: str = "") -> list[str]:
    """Check one .npy stream of `size` bytes positioned at its start."""
    head = handle.read(10)
    if not head.startswith(NPY_MAGIC) or len(head) < 10:
        return [f"{label}not a .npy array"]
    major = head[6]
    if major == 1:
        header_len = int.from_bytes(head[8:10], "little")
        start = 10
    elif major in (2, 3):
        header_len = int.from_bytes(head[8:10] + handle.read(2), "little")
        start = 12
    else:
        return [f"{label}unknown .npy version {major}"]
    if header_len > MAX_HEADER:
        return [f"{label}a {header_len}-byte .npy header"]
    try:
        header = ast.literal_eval(handle.read(header_len).decode("latin1"))
        dtype = np.dtype(header["descr"]) if not isinstance(header["descr"], list) else np.dtype([tuple(f) for f in header["descr"]])
        shape = tuple(header["shape"])
        if not all(isinstance(s, int) and s >= 0 for s in shape):
            raise ValueError("shape")
    except (ValueError, SyntaxError, KeyError, TypeError, RecursionError, MemoryError, UnicodeDecodeError) as exc:
        return [f"{label}unreadable .npy header ({type(exc).__name__})"]
    count = math.prod(shape)
    if dtype.hasobject:
        findings = [f"{label}an object array (dtype {dtype}): loading it unpickles Python objects"]
        return findings + [f"{label}{f}" for f in walk_pickle(handle.read(min(size, LIMITS.parsed_member) - start)).findings][:10]
    if count > LIMITS.elements:
        return [f"{label}claims {count} elements, over the limit of {LIMITS.elements}"]
    if count * dtype.itemsize != size - start - header_len:
        return [f"{label}shape {shape} x {dtype} needs {count * dtype.itemsize} bytes, the array holds {size - start - header_len}"]
    return []


def check_npz(check: ArchiveCheck) -> list[str]:
    findings: list[str] = []
    for info in check.archive.infolist():
        if not info.filename.endswith(".npy"):
            findings.append(f"{info.filename}: not an .npy member")
            continue
        with check.archive.open(info) as member:
            findings += check_npy(member, info.file_size, label=f"{info.filename}: ")
    return findings
