"""The one real Ray test: two local workers, a model that kills its worker, one that hangs."""

from __future__ import annotations

import functools
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
