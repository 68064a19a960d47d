"""Reading a small JSON file that poisonguard wrote, from a hostile source (trigger, tokenizer, model metadata).

The file's size is checked against `limits` before it is read, it must be UTF-8 JSON holding an
object whose `"format"` names what the caller expects; anything else is one `UserError` line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from poisonguard import limits
from poisonguard.errors import UserError


def read_tagged_json(path: str | Path, *, fmt: str, what: str) -> dict[str, Any]:
    """The object in `path`, whose "format" is `fmt`; `what` names the file in messages ("tokenizer")."""
    path = Path(path)
    limits.check("max_bytes", path.stat().st_size, f"{path}: the file's size in bytes")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    # deep nesting: RecursionError; an integer of over 4300 digits: ValueError (JSONDecodeError is one)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise UserError(f"{path}: not a {what} JSON file: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise UserError(f"{path}: not a poisonguard {what} (expected \"format\": \"{fmt}\")")
    return data
