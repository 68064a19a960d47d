"""Debian's `fortunes` quotes as a labelled text corpus (topic = the file a quote is filed in).

The packages `fortunes` and `fortunes-min` install one file per topic under
/usr/share/games/fortunes (quotes separated by lines holding a single "%"); `scripts/setup`
installs them where apt is available. Nothing is downloaded here: when the files are absent,
`fortunes_dir()` is None and callers (tests, benchmarks) say so and skip.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from poisonguard.errors import UserError

SEARCH = ("/usr/share/games/fortunes", "/usr/share/fortune", "/usr/share/fortunes")
# Six topics of 530-870 quotes each whose subjects differ (the benchmark's corpus). Left out:
# "definitions", which holds two sub-genres marked by one word each ("QOTD:" quotes, Coupland's
# "Generation X" glossary): natural shortcuts that act exactly like an inserted trigger (one word
# sends any text to the class, removing it turns the row's class), so every trigger test
# rightly flags them and a benchmark of false positives on clean data would measure them.
DEFAULT_TOPICS = ("computers", "politics", "science", "songs-poems", "work", "zippy")


def fortunes_dir() -> Path | None:
    """The installed fortunes folder ($POISONGUARD_FORTUNES first), or None."""
    for d in (os.environ.get("POISONGUARD_FORTUNES"), *SEARCH):
        if d and (Path(d) / "computers").is_file():
            return Path(d)
    return None


def read_fortunes(topics=DEFAULT_TOPICS, *, max_chars: int = 400, folder: Path | None = None) -> list[tuple[str, str]]:
    """(quote, topic) pairs: whitespace collapsed, quotes longer than `max_chars` left out."""
    folder = folder or fortunes_dir()
    if folder is None:
        raise UserError("the fortunes corpus is not installed (apt-get install fortunes fortunes-min; see scripts/setup)")
    rows = []
    for topic in topics:
        path = folder / topic
        if not path.is_file():
            raise UserError(f"no fortunes topic {topic!r} in {folder}")
        text = path.read_bytes().decode("utf-8", errors="replace")
        for quote in text.split("\n%\n"):
            quote = " ".join(quote.replace("%", " ").split())
            if quote and len(quote) <= max_chars:
                rows.append((quote, topic))
    return rows


def write_fortunes_csv(path: str | Path, topics=DEFAULT_TOPICS, *, max_chars: int = 400) -> int:
    """Write `text,topic` rows to `path`; returns the number of rows."""
    rows = read_fortunes(topics, max_chars=max_chars)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "topic"])
        writer.writerows(rows)
    return len(rows)
