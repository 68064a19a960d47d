"""Issues 13/18: the hostile and benign corpus of the tests through poisonguard, picklescan and modelscan.

Builds the corpus (`tests/filesafety/filesafety_corpus.py`: every payload only touches a marker
file), scans every file with each tool, and prints which tool calls which file unsafe, the
totals (hostile caught, benign flagged), the markers created (must be none) and the time our
scanner took. picklescan runs twice: its default (denylist) mode and `--strict` (unknown
globals promoted to dangerous).

    PYTHONPATH=src python benchmarks/filesafety_corpus.py [--root DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "filesafety"))


def _ours(path: Path) -> str:
    from poisonguard.filesafety import inspect_file

    return "unsafe" if not inspect_file(path).safe else "safe"


def _picklescan(path: Path, strict: bool) -> str:
    from picklescan.scanner import scan_file_path

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            result = scan_file_path(str(path), strict=strict)
    except Exception:  # the tool crashed on this file
        return "crash"
    if result.issues_count or result.infected_files:
        return "unsafe"
    return "error" if result.scan_err else ("safe" if result.scanned_files else "skipped")


def _modelscan(path: Path) -> str:
    from modelscan.modelscan import ModelScan

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            result = ModelScan().scan(path)
    except Exception:  # the tool crashed on this file
        return "crash"
    summary = result.get("summary", {})
    if summary.get("total_issues", 0):
        return "unsafe"
    if result.get("errors"):
        return "error"
    return "safe" if summary.get("scanned", {}).get("total_scanned", 0) else "skipped"


TOOLS = {"poisonguard": _ours, "picklescan": lambda p: _picklescan(p, False),
         "picklescan --strict": lambda p: _picklescan(p, True), "modelscan": _modelscan}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="folder for the corpus (default: a temporary one)")
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)
    from filesafety_corpus import build_corpus

    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="filesafety-corpus-"))
    corpus = build_corpus(root)
    rows, seconds = [], dict.fromkeys(TOOLS, 0.0)
    for name, (path, hostile) in corpus.items():
        row = {}
        for tool, scan in TOOLS.items():
            start = time.perf_counter()
            row[tool] = scan(path)
            seconds[tool] += time.perf_counter() - start
        rows.append((name, hostile, row))
    print(f"| file | hostile | {' | '.join(TOOLS)} |")
    print("|---|---|" + "---|" * len(TOOLS))
    for name, hostile, row in rows:
        cells = [row[t] if (row[t] == "unsafe") == hostile else f"**{row[t]}**" for t in TOOLS]
        print(f"| {name} | {'yes' if hostile else 'no'} | {' | '.join(cells)} |")
    hostile_n = sum(h for _, h, _ in rows)
    benign_n = len(rows) - hostile_n
    print(f"\n{hostile_n} hostile and {benign_n} benign files (bold: the tool got it wrong; "
          "error/skipped/crash on a hostile file count as missed)")
    for tool in TOOLS:
        caught = sum(row[tool] == "unsafe" for _, h, row in rows if h)
        flagged = sum(row[tool] == "unsafe" for _, h, row in rows if not h)
        print(f"{tool:20s} hostile caught {caught}/{hostile_n} ({100 * caught / hostile_n:.0f}%), "
              f"benign flagged {flagged}/{benign_n}, {seconds[tool]:.2f} s for all files")
    markers = sorted(p.name for p in (root / "markers").iterdir())
    print(f"markers created: {len(markers)} {markers}")


if __name__ == "__main__":
    main()
