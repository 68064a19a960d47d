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


def test_the_childs_folder_is_removed_however_the_child_ends(tmp_path, monkeypatch):
    """The child is killed once its answer arrives; its folder, full of files, must still go."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    cwd = run_isolated(targets.litter, 3000, timeout=60)
    assert cwd.startswith(str(tmp_path))
    with pytest.raises(SandboxError):
        run_isolated(targets.litter_and_hang, 3000, timeout=8)
    with pytest.raises(SandboxError):
        run_isolated(targets.die, timeout=20)
    assert list(tmp_path.glob("poisonguard-sandbox-*")) == []


def test_timeout_must_be_positive():
    with pytest.raises(ValueError):
        run_isolated(targets.fail, timeout=0)


def test_trial_load_passes_benign_code_formats(corpus):
    from poisonguard.filesafety import require_safe

    root, _ = corpus
    assert require_safe(root / "benign" / "scripted.pt", trial=True, input_shape=[4]).safe
    assert require_safe(root / "benign" / "exported.pt2", trial=True, input_shape=[4]).safe  # a probe forward too
    # a dynamic batch imports torch._dynamo, whose temp-folder probe the file-size limit broke (and
    # the failure was taken as a pass)
    assert require_safe(root / "benign" / "exported_dynamic.pt2", trial=True, input_shape=[4]).safe


def test_a_forward_that_never_ends_is_refused_by_the_trial_load(tmp_path):
    """Issue 13: Ctrl-C could not stop a looping TorchScript forward; the trial load kills it."""
    from filesafety_corpus import spinning_torchscript

    from poisonguard.errors import UnsafeFileError
    from poisonguard.filesafety import inspect_file, require_safe

    path = tmp_path / "spins.pt"
    path.write_bytes(spinning_torchscript())
    assert inspect_file(path).safe  # nothing in it is refused statically: this is the second wall's case
    start = time.monotonic()
    with pytest.raises(UnsafeFileError, match="did not finish"):
        require_safe(path, trial=True, input_shape=[4], timeout=12)
    assert time.monotonic() - start < 30


def test_unknown_formats_are_a_user_error(tmp_path):
    from poisonguard.errors import UserError
    from poisonguard.filesafety import inspect_file, require_safe

    path = tmp_path / "notes.txt"
    path.write_text("just text")
    assert not inspect_file(path).safe and inspect_file(path).format == "unknown"
    with pytest.raises(UserError):
        require_safe(path)
