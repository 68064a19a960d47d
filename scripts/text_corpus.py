"""Turn Debian's installed `fortunes` files into a labelled CSV (text,topic) for text tests and benchmarks.

    python scripts/text_corpus.py out.csv [--topics computers,politics,...] [--max-chars 400]

The quotes are filed by topic (one file per topic under /usr/share/games/fortunes, quotes
separated by lines holding a single '%'); `scripts/setup` installs the packages when apt is
there. Exits 2 with one line when the corpus is absent. Also importable: `fortunes_csv()`.
"""

import argparse
import sys

from poisonguard.data.fortunes import DEFAULT_TOPICS, write_fortunes_csv
from poisonguard.errors import UserError


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--topics", default=",".join(DEFAULT_TOPICS))
    p.add_argument("--max-chars", type=int, default=400)
    a = p.parse_args()
    from pathlib import Path

    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    try:
        n = write_fortunes_csv(a.out, tuple(t for t in a.topics.split(",") if t), max_chars=a.max_chars)
    except UserError as exc:
        print(f"text_corpus: {exc}", file=sys.stderr)
        return 2
    print(f"{a.out}: {n} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
