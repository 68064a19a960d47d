"""An audit killed with SIGKILL mid-run loses nothing finished; the rerun scans only the rest."""

from __future__ import annotations

import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
SRC = HERE.parents[1] / "src"


def _done(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as con:
            return con.execute("SELECT COUNT(*) FROM results WHERE status != 'running'").fetchone()[0]
    except sqlite3.OperationalError:  # the table is not created yet
        return 0


def test_kill_9_mid_run_then_rerun_finishes_each_model_once(tmp_path):
    zoo, out, log = tmp_path / "zoo", tmp_path / "out", tmp_path / "scans.log"
    n = 8
    for i in range(n):
        (zoo / f"m{i}").mkdir(parents=True)
        (zoo / f"m{i}" / "model.pt").write_bytes(pickle.dumps(i, protocol=4))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(HERE)]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(HERE / "audit_fakes.py"), str(zoo), str(out), str(log), "0.3"]
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while _done(out / "audit.db") < 3 and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL  # killed mid-run, not finished
    with sqlite3.connect(out / "audit.db") as con:
        kept = {p for (p,) in con.execute("SELECT path FROM results WHERE status = 'done'")}
    assert 3 <= len(kept) < n
    lines_before = len(log.read_text().splitlines())

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    resumed, scanned = map(int, rerun.stdout.split())
    assert resumed == len(kept) and resumed + scanned == n
    started_after = [line.split(" ", 1)[1] for line in log.read_text().splitlines()[lines_before:] if line.startswith("start ")]
    with sqlite3.connect(out / "audit.db") as con:
        rows = con.execute("SELECT path, status, attempts FROM results").fetchall()
    assert len(rows) == n and all(status == "done" for _, status, _ in rows)
    assert not kept & set(started_after)  # nothing finished before the kill was scanned again
    assert len(started_after) == len(set(started_after)) == scanned
    assert sum(attempts for _, _, attempts in rows) <= n + 1  # at most the one in flight ran twice
