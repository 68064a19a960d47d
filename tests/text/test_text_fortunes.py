"""The real corpus the text benchmark uses (Debian's fortunes), when it is installed."""

from __future__ import annotations

import pytest

from poisonguard.data.fortunes import DEFAULT_TOPICS, fortunes_dir, read_fortunes

pytestmark = pytest.mark.skipif(fortunes_dir() is None,
                                reason="fortunes corpus not installed (scripts/setup installs it with apt-get)")


def test_converter_writes_a_labelled_csv_the_text_loader_reads(tmp_path):
    from poisonguard.data.fortunes import write_fortunes_csv
    from poisonguard.data.text import load_text

    n = write_fortunes_csv(tmp_path / "f.csv")
    splits = load_text(str(tmp_path / "f.csv"), text_column="text", label_column="topic")
    assert len(splits.train) + len(splits.test) == n > 3000
    assert splits.classes == tuple(sorted(DEFAULT_TOPICS))
    rows = read_fortunes(("computers",), max_chars=100)
    assert rows and all(len(t) <= 100 and topic == "computers" for t, topic in rows)
