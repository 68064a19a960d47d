"""Decoding one image file as hostile input: size read from the header and checked first.

Pillow reads width and height before it decodes; a 30000x30000 PNG of a few kilobytes is
refused there, against `limits.max_pixels`, instead of allocating gigabytes. Every error
Pillow can raise for a corrupt file becomes one `UserError`.
"""

from __future__ import annotations

import io
import warnings

import numpy as np

from poisonguard import limits
from poisonguard.errors import UserError


def _pil():
    from PIL import Image

    # Pillow's own bomb check, aligned with ours (it warns above the value and raises above twice it).
    Image.MAX_IMAGE_PIXELS = limits.get("max_pixels")
    return Image


def decode_image(blob: bytes, name: str, *, mode: str | None = None, size: tuple[int, int] | None = None,
                 expect: tuple[int, int] | None = None) -> np.ndarray:
    """(C, H, W) uint8 array of an image file's bytes.

    Args:
        mode: "L" or "RGB" to convert to; None keeps L and RGB images and converts others to RGB.
        size: (width, height) to resize to after decoding.
        expect: (width, height) the header must declare (e.g. CIFAR's 32x32), checked before decoding.
    """
    Image = _pil()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(blob)) as img:
                width, height = img.size
                if expect is not None and (width, height) != tuple(expect):
                    raise UserError(f"image {name} is {width}x{height}, expected {expect[0]}x{expect[1]}")
                limits.check("max_pixels", width * height, f"image {name}: its pixel count ({width}x{height})")
                img = _eight_bit(img, name)
                target = mode or ("RGB" if img.mode not in ("L", "RGB") else img.mode)
                img = img.convert(target) if img.mode != target else img.copy()
            if size is not None and img.size != tuple(size):
                img = img.resize(tuple(size), Image.BILINEAR)
            arr = np.asarray(img)
    except UserError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        import re

        found = re.search(r"\((\d+) pixels\)", str(exc))  # Pillow's message holds the header's pixel count
        count = f"{int(found.group(1)):,} pixels" if found else "its pixel count"
        raise UserError(f"image {name}: {count} (from its header) is over the limit of {limits.get('max_pixels'):,} "
                        f"(max_pixels); {limits.how_to_raise('max_pixels')}") from None
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, ValueError, struct.error) for corrupt files
        raise UserError(f"cannot decode image {name}: {type(exc).__name__}: {exc}") from exc
    if arr.dtype != np.uint8:
        raise UserError(f"image {name}: {arr.dtype} pixels, expected 8-bit")
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _eight_bit(img, name: str):
    """A 16- or 32-bit integer grey image scaled to 8 bits ("L"); other modes unchanged.

    Pillow's own conversion clips such values at 255, so a 16-bit scan (values in the
    thousands) became an all-white image without a word.
    """
    if not (img.mode.startswith("I;16") or img.mode in ("I", "F")):
        return img
    arr = np.asarray(img)
    if img.mode == "F" or not np.isfinite(arr).all():
        raise UserError(f"image {name}: floating-point pixels (mode {img.mode}); convert it to 8 or 16 bits")
    low, high = int(arr.min()), int(arr.max())
    if low < 0 or high > 65535:
        raise UserError(f"image {name}: pixel values {low}..{high} lie outside 16 bits (mode {img.mode})")
    return _pil().fromarray(np.rint(arr.astype(np.float64) / 257).astype(np.uint8))  # 2-D uint8: mode "L"


def read_file(path, name: str | None = None) -> bytes:
    """A file's bytes, read with a cap (limits.max_bytes), every OSError as one UserError."""
    import os
    import stat

    name = name or str(path)
    cap = limits.get("max_bytes")
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a fifo would block on open, a device never end
            raise UserError(f"cannot read {name}: not a regular file")
        with open(path, "rb") as handle:
            blob = handle.read(cap + 1)
    except OSError as exc:
        raise UserError(f"cannot read {name}: {exc.strerror or exc}") from exc
    if len(blob) > cap:
        limits.check("max_bytes", len(blob), f"{name}: the file's size in bytes (at least)")
    return blob
