"""The one real Ray test: two local workers, a model that kills its worker, one that hangs."""

from __future__ import annotations

import functools
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import pytest

from poisonguard.audit import AuditSettings, discover
from poisonguard.audit.run import run_audit
from poisonguard.audit.runner import RayExecutor
from poisonguard.audit.worker import audit_one


def test_ray_audit_survives_a_crashing_and_a_hanging_model(tmp_path, fake_filesafety, monkeypatch):
    pytest.importorskip("ray")
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(fake_filesafety)  # the workers cannot import the test folder
    zoo = tmp_path / "zoo"
    for i, name in enumerate(["a_clean", "b_crash", "c_backdoor", "d_hang", "e_clean", "f_backdoor"]):
        (zoo / name).mkdir(parents=True)
        (zoo / name / "model.bin").write_bytes(pickle.dumps(i, protocol=4))
    log = tmp_path / "scans.log"
    task = functools.partial(audit_one, inspect=fake_filesafety.fake_inspect,
                             scan=functools.partial(fake_filesafety.fake_scan, log=str(log)))
    sessions = Path(tempfile.mkdtemp(prefix="pgt-", dir="/tmp"))  # short: Ray's socket paths are limited
    monkeypatch.setenv("RAY_TMPDIR", str(sessions))  # Ray's session folder goes here, and is removed after
    executor = RayExecutor(task, workers=2, timeout=6, threads=1)
    outcome = run_audit(discover(zoo), AuditSettings(), tmp_path / "out", make_executor=lambda: executor)
    rows = {Path(r["path"]).parent.name: r for r in outcome.rows}
    assert rows["b_crash"]["status"] == "failed" and "crashed" in rows["b_crash"]["error"]
    assert rows["d_hang"]["status"] == "failed" and "timed out" in rows["d_hang"]["error"]
    for name in ("a_clean", "c_backdoor", "e_clean", "f_backdoor"):
        assert rows[name]["status"] == "done", (rows[name]["status"], rows[name]["error"])
        assert rows[name]["verdict"]["backdoored"] == ("backdoor" in name)
        assert rows[name]["verdict"]["threads"] == 1  # each worker kept to its share
        assert rows[name]["attempts"] == 1
    assert log.read_text().count("end ") == 4
    left = list(sessions.iterdir())
    shutil.rmtree(sessions)
    assert not left, "Ray's session folder (logs, sockets) was left behind"


_TERMINATED_AUDIT = """
import functools, pickle, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import audit_fakes
from ray import cloudpickle
from poisonguard.audit import AuditSettings, discover
from poisonguard.audit.run import run_audit
from poisonguard.audit.runner import RayExecutor
from poisonguard.audit.worker import audit_one

cloudpickle.register_pickle_by_value(audit_fakes)
zoo = Path({zoo!r})
(zoo / "d_hang").mkdir(parents=True)
(zoo / "d_hang" / "model.bin").write_bytes(pickle.dumps(0, protocol=4))
task = functools.partial(audit_one, inspect=audit_fakes.fake_inspect,
                         scan=functools.partial(audit_fakes.fake_scan, log={log!r}))
try:
    run_audit(discover(zoo), AuditSettings(), Path({out!r}), make_executor=lambda: RayExecutor(task, workers=1, threads=1))
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_sigterm_stops_the_audit_as_ctrl_c_does(tmp_path):
    """SIGTERM met Ray's handler: a C++ stack dump, and no clean-up (workers, session folder)."""
    pytest.importorskip("ray")
    import os
    import signal
    import subprocess
    import sys
    import time

    sessions = Path(tempfile.mkdtemp(prefix="pgt-", dir="/tmp"))
    log = tmp_path / "scans.log"
    script = _TERMINATED_AUDIT.format(tests=str(Path(__file__).parent), zoo=str(tmp_path / "zoo"), log=str(log),
                                      out=str(tmp_path / "out"))
    child = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "RAY_TMPDIR": str(sessions)})
    try:
        deadline = time.monotonic() + 120
        while not (log.exists() and "start" in log.read_text()) and time.monotonic() < deadline:
            assert child.poll() is None, child.stderr.read()
            time.sleep(0.5)
        child.send_signal(signal.SIGTERM)  # the model hangs on its worker: the driver is waiting
        _, err = child.communicate(timeout=60)
    finally:
        child.kill()
        left = list(sessions.iterdir())
        shutil.rmtree(sessions)
    assert child.returncode == 130, err
    assert "SIGTERM received" not in err
    assert not left, "Ray's session folder was left behind"


def test_session_folders_of_dead_audits_are_swept(tmp_path):
    """An audit killed with kill -9 left its Ray session folder behind for good."""
    import subprocess
    import sys

    from poisonguard.audit.runner import OWNER_FILE, sweep_dead_sessions

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for name, owner in (("pg-ray-dead", str(dead.pid)), ("pg-ray-alive", str(os.getpid())), ("pg-ray-unknown", None)):
        (tmp_path / name / "session_x").mkdir(parents=True)
        if owner is not None:
            (tmp_path / name / OWNER_FILE).write_text(owner)
    sweep_dead_sessions(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pg-ray-alive", "pg-ray-unknown"]
