"""Size limits for what the scanner parses, so a small hostile file cannot make it allocate much.

Each limit is far above what an ordinary model of the sizes poisonguard works with needs; a
file past one is unsafe (a finding naming the limit), never a crash. `POISONGUARD_MAX_MODEL_BYTES`
raises the total a model's archive may decompress to, for users with larger models.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

GiB = 1 << 30
MiB = 1 << 20


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


@dataclass(frozen=True)
class Limits:
    archive_bytes: int = _env_int("POISONGUARD_MAX_MODEL_BYTES", 16 * GiB)  # all members of one archive, decompressed
    zip_members: int = 100_000
    zip_ratio: int = 200            # decompressed / compressed for one deflated member ...
    ratio_floor: int = 1 * MiB      # ... once it is this large (small text files compress well)
    parsed_member: int = 256 * MiB  # a pickle, JSON or code member read into memory to be parsed
    header_bytes: int = 100 * MiB   # a safetensors JSON header
    elements: int = 1 << 34         # elements one tensor or array may claim
    nesting: int = 3                # archives inside archives
    onnx_bytes: int = 2 * GiB       # protobuf's own limit
    computed_elements: int = 1 << 31  # a value an ONNX graph computes, for one input (8 GiB of float32)
    expanded_nodes: int = 200_000   # ONNX nodes once local functions are expanded (shape inference expands them)


LIMITS = Limits()
