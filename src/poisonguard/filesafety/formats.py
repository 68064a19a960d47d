"""What a file is, from its bytes: never from its name (a TorchScript archive named
`model.safetensors` is TorchScript)."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from typing import BinaryIO

FORMATS = ("torch-zip", "torchscript", "torch.export", "legacy-torch", "pickle", "safetensors", "onnx",
           "npz", "npy", "unknown")

# torch.save's legacy (non-zip) format starts with a pickled magic number: PROTO 2, LONG1 of 10 bytes.
LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little") + b"."
NPY_MAGIC = b"\x93NUMPY"
# Opcodes a protocol 0/1 pickle can start with: MARK, GLOBAL, INST-less containers, constants.
_OLD_PICKLE_STARTS = b"(c]}NIFLSVXKJGTU\x88\x89"


def zip_kind(names: list[str]) -> str:
    """Which torch (or numpy) archive a list of zip member names describes."""
    inner = {name.split("/", 1)[1] if "/" in name else name for name in names}
    if "archive_format" in inner or any(n.startswith("models/") and n.endswith(".json") for n in inner):
        return "torch.export"
    if "constants.pkl" in inner or any(n.startswith("code/") for n in inner):
        return "torchscript"
    if "data.pkl" in inner:
        return "torch-zip"
    if names and all(n.endswith(".npy") for n in names):
        return "npz"
    return "unknown"


def sniff(handle: BinaryIO, size: int) -> str:
    """One of FORMATS for an open binary file of `size` bytes (reads a little from the start)."""
    handle.seek(0)
    head = handle.read(64)
    if head[:4] == b"PK\x03\x04":
        try:
            handle.seek(0)
            with zipfile.ZipFile(handle) as archive:
                return zip_kind(archive.namelist())
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error):
            return "unknown"
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head.startswith(LEGACY_MAGIC):
        return "legacy-torch"
    # safetensors before pickle: a header of 640 (0x280) bytes starts `80 02`, as a protocol-2
    # pickle does, and a file `train` wrote was refused as a malformed pickle. A pickle taken for
    # safetensors is never unpickled (the safetensors check and reader parse JSON and raw bytes).
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if header_len >= 2 and head[8:9] == b"{":  # a length past the file is a lie the check reports
            return "safetensors"
    if len(head) >= 2 and head[0] == 0x80 and head[1] <= 5:
        return "pickle"
    if head[:1] == b"\x08" and _looks_like_onnx(handle, size):
        return "onnx"
    if head[:1] and head[:1] in _OLD_PICKLE_STARTS and _parses_as_pickle(handle):
        return "pickle"
    return "unknown"


def _looks_like_onnx(handle: BinaryIO, size: int) -> bool:
    """A ModelProto that parses and has a graph (external data is never read)."""
    from poisonguard.filesafety.limits import LIMITS

    if size > LIMITS.onnx_bytes:
        return False
    try:
        import onnx
    except ImportError:  # onnx is optional; without it no file is recognised as ONNX
        return False
    handle.seek(0)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(handle.read())
    except Exception:  # protobuf's DecodeError and friends
        return False
    return model.ir_version > 0 and model.HasField("graph")


def _parses_as_pickle(handle: BinaryIO) -> bool:
    import io
    import pickletools

    handle.seek(0)
    try:
        for opcode, _, _ in pickletools.genops(io.BytesIO(handle.read(1 << 20))):
            if opcode.name == "STOP":
                return True
    except Exception:  # not a pickle
        return False
    return False


def sniff_path(path: str | Path) -> str:
    path = Path(path)
    with open(path, "rb") as handle:
        return sniff(handle, path.stat().st_size)
