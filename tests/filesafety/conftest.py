"""The benign and hostile corpora, built once per test session (about 20 s on 2 cores)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    from filesafety_corpus import build_corpus

    root = tmp_path_factory.mktemp("filesafety")
    return root, build_corpus(root)
