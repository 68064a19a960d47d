"""The second wall: an isolated, killable process with a timeout and a file-size limit."""

from __future__ import annotations

import os
import time

import pytest

import sandbox_targets as targets
from poisonguard.filesafety.sandbox import SandboxError, run_isolated


def test_a_hang_is_killed_at_the_timeout():
    start = time.monotonic()
    with pytest.raises(SandboxError, match="did not finish"):
        run_isolated(targets.sleep_forever, timeout=1.5)
    assert time.monotonic() - start < 10


def test_a_crash_is_a_clean_error_and_an_exception_one_line():
    with pytest.raises(SandboxError, match="without an answer"):
        run_isolated(targets.die, timeout=20)
    with pytest.raises(RuntimeError, match="broken on purpose$"):
        run_isolated(targets.fail, timeout=20)


def test_the_child_writes_nothing_and_starts_elsewhere_without_proxies(tmp_path, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    target = tmp_path / "written.txt"
    answer = run_isolated(targets.write, str(target), timeout=20)
    assert answer["error"] is not None and answer["proxy"] is None
    assert answer["cwd"] != os.getcwd() and "poisonguard-sandbox-" in answer["cwd"]
    assert target.stat().st_size == 0


def test_timeout_must_be_positive():
    with pytest.raises(ValueError):
        run_isolated(targets.fail, timeout=0)


def test_trial_load_passes_benign_code_formats(corpus):
    from poisonguard.filesafety import require_safe

    root, _ = corpus
    assert require_safe(root / "benign" / "scripted.pt", trial=True, input_shape=[4]).safe
    assert require_safe(root / "benign" / "exported.pt2", trial=True).safe
