"""Reading `.npz` archives as hostile input: no pickle, sizes checked before anything is allocated.

`numpy.load` would trust each member's header: a 400 KB deflate bomb can claim and fill
gigabytes, a header can claim 1e12 values, and a bad CRC or an odd dtype surfaces as one of
many exception types. Here each member's declared size and `.npy` header (shape, dtype) are
read first and checked against `poisonguard.limits`; only then is the array read, with the
read capped at the size the header implies, and the zip's CRC checked at the end.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from poisonguard import limits
from poisonguard.errors import UserError

# dtype kinds an array may have: b bool, i/u integers, f floats, U/S strings (names only).
NUMERIC = "biuf"
INTEGER = "iu"
TEXT = "US"
_MAX_HEADER = 10_000  # numpy's own default for max_header_size

_SUPPORTED_COMPRESSION = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}


def read_npz(path: str | Path, *, kinds: dict[str, str] | None = None, what: str = "") -> dict[str, np.ndarray]:
    """The arrays of an `.npz` file, by name (without `.npy`).

    Args:
        path: the file.
        kinds: allowed dtype kinds per array name (e.g. {"x": NUMERIC, "y": INTEGER}); arrays
            not named here must be numeric or text. Object, structured, complex and datetime
            arrays are always refused.
        what: how the message names the file (default: its path).

    Raises:
        UserError: not a readable pickle-free npz, a member over a limit, a bad CRC, a dtype
            the caller does not accept.
    """
    path = Path(path)
    what = what or str(path)
    kinds = kinds or {}
    if not path.exists():
        raise UserError(f"{what}: no such file")
    if not path.is_file():
        raise UserError(f"{what}: not a regular file")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UserError(f"cannot read {what} as an .npz (a zip of .npy arrays): {exc}") from exc
    with archive:
        infos = [i for i in archive.infolist() if not i.is_dir()]
        limits.check("max_files", len(infos), f"{what}: the number of arrays")
        limits.check("max_total_bytes", sum(i.file_size for i in infos), f"{what}: the declared size of all arrays together")
        out = {}
        for info in infos:
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if name in out:  # readers disagree on which copy counts (zipfile: the last; others: the first)
                raise UserError(f"{what}: the array {name!r} appears more than once")
            out[name] = _read_member(archive, info, f"{what}:{name}", kinds.get(name, NUMERIC + TEXT))
    return out


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, what: str, allowed: str) -> np.ndarray:
    check_member(info, what)
    try:
        with archive.open(info) as stream:
            version = np.lib.format.read_magic(stream)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream, max_header_size=_MAX_HEADER)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream, max_header_size=_MAX_HEADER)
            else:
                raise UserError(f"{what}: unknown .npy version {version}")
            check_dtype(dtype, what, allowed)
            count = int(np.prod(shape, dtype=object))  # exact: no overflow for a claimed 1e12 x 1e12
            limits.check("max_values", count, f"{what}: the array's value count")
            nbytes = count * dtype.itemsize
            if nbytes > info.file_size:
                raise UserError(f"{what}: the header claims {nbytes:,} bytes but the member holds {info.file_size:,}")
            limits.check("max_bytes", nbytes, f"{what}: the array's size in bytes")
            buffer = bytearray(nbytes)
            view = memoryview(buffer)
            got = 0
            while got < nbytes:
                n = stream.readinto(view[got:])
                if not n:
                    break
                got += n
            if got != nbytes:
                raise UserError(f"{what}: the array is truncated ({got:,} of {nbytes:,} bytes)")
            stream.read(1 << 16)  # reach the end of the member so zipfile checks its CRC
    except UserError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, SyntaxError, TypeError, NotImplementedError) as exc:
        raise UserError(f"cannot read {what}: {exc}") from exc
    array = np.frombuffer(buffer, dtype=dtype)
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)


def check_member(info: zipfile.ZipInfo, what: str) -> None:
    """Refuse a zip member that zipfile cannot read safely, or whose declared size is over the limit."""
    if info.flag_bits & 0x1:
        raise UserError(f"{what}: the member is encrypted")
    if info.compress_type not in _SUPPORTED_COMPRESSION:
        raise UserError(f"{what}: unsupported compression method {info.compress_type} (zipfile reads stored, deflate, bzip2 and lzma)")
    limits.check("max_bytes", info.file_size, f"{what}: the member's declared size in bytes")


def check_dtype(dtype: np.dtype, what: str, allowed: str) -> None:
    """Refuse object, structured, complex, datetime arrays and any kind not in `allowed`."""
    names = {"b": "boolean", "i": "integer", "u": "unsigned integer", "f": "float", "c": "complex",
             "U": "string", "S": "bytes", "O": "object", "V": "structured", "M": "datetime", "m": "timedelta"}
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in allowed:
        want = " or ".join(names[k] for k in allowed)
        raise UserError(f"{what}: a {names.get(dtype.kind, dtype.kind)} array ({dtype.str}); expected {want}")
