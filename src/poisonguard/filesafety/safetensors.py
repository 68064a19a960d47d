"""safetensors files: an 8-byte little-endian header length, a JSON header, then raw tensor bytes.

The format carries no code; the attacks are headers that lie. Checked: the header length fits
the file and the limit, the JSON is an object without duplicate keys, every tensor has a known
dtype and a shape of non-negative integers, its offsets lie inside the data, its byte span is
exactly shape x dtype size, the spans are contiguous from 0 with no gap or overlap (what the
safetensors library itself requires), and no tensor claims more elements than the limit.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any, BinaryIO

from poisonguard.filesafety.limits import LIMITS

DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8, "C128": 16}


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate keys {sorted({k for k in keys if keys.count(k) > 1})[:3]}")
    return dict(pairs)


def check_safetensors(handle: BinaryIO, size: int) -> list[str]:
    handle.seek(0)
    (header_len,) = struct.unpack("<Q", handle.read(8))
    if header_len > min(size - 8, LIMITS.header_bytes):
        return [f"header claims {header_len} bytes (file {size}, limit {LIMITS.header_bytes})"]
    try:
        header = json.loads(handle.read(header_len).decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        return [f"header is not valid JSON ({str(exc)[:100]})"]
    if not isinstance(header, dict):
        return ["header is not a JSON object"]
    data_len = size - 8 - header_len
    findings: list[str] = []
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        findings.append("__metadata__ is not a map of strings")
    spans = []
    for name, entry in header.items():
        problem, span = _entry_problem(entry, data_len)
        if problem:
            findings.append(f"tensor {name[:60]!r}: {problem}")
        elif span is not None:
            spans.append((*span, name))
    spans.sort()
    position = 0
    for start, end, name in spans:
        if start != position:
            findings.append(f"tensor {name[:60]!r} starts at {start}, not where the previous one ends ({position}): "
                            f"{'overlapping' if start < position else 'a gap in the'} data")
            break
        position = end
    if not findings and position != data_len:
        findings.append(f"tensors cover {position} of the {data_len} data bytes")
    return findings[:40]


def _entry_problem(entry: Any, data_len: int) -> tuple[str | None, tuple[int, int] | None]:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        return "entry is not {dtype, shape, data_offsets}", None
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPE_BYTES:
        return f"unknown dtype {str(dtype)[:20]!r}", None
    if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        return "shape is not a list of non-negative integers", None
    count = math.prod(shape)
    if count > LIMITS.elements:
        return f"claims {count} elements, over the limit of {LIMITS.elements}", None
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
        return "data_offsets is not two integers", None
    start, end = offsets
    if not 0 <= start <= end <= data_len:
        return f"offsets [{start}, {end}] lie outside the {data_len} data bytes", None
    if end - start != count * DTYPE_BYTES[dtype]:
        return f"spans {end - start} bytes but shape {shape} x {dtype} needs {count * DTYPE_BYTES[dtype]}", None
    return None, (start, end)
