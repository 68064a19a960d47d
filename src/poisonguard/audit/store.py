"""`OUT/audit.db`: one SQLite row per (file sha256, settings hash), written as each model finishes.

Each write is its own committed transaction, so a `kill -9` loses at most the models still
running. Status: `running` (dispatched, not finished: a killed audit leaves these and a rerun
does them again), `done` (checked and, for a safe model, scanned), `unsafe` (refused by the
file check, never loaded), `failed` (with its error; retried only with --retry-failed).
`attempts` counts dispatches, so "every model scanned exactly once" can be read off the table.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable

from poisonguard.errors import UserError

FINISHED = ("done", "unsafe", "failed")

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    sha256 TEXT NOT NULL,
    settings TEXT NOT NULL,
    path TEXT NOT NULL,
    format TEXT,
    status TEXT NOT NULL,
    file_safety TEXT,
    file_findings TEXT NOT NULL DEFAULT '[]',
    verdict TEXT,
    error TEXT,
    seconds REAL,
    report_dir TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    settings_json TEXT,
    updated REAL NOT NULL,
    PRIMARY KEY (sha256, settings)
)
"""


LOCK_NAME = "audit.lock"


@contextlib.contextmanager
def only_writer(out: Path):
    """Hold `OUT/audit.lock` while this audit writes OUT: a second audit into the same folder
    would dispatch the same models again and interleave its reports with ours. The lock is the
    kernel's (flock), so a killed audit never leaves a stale one behind."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK_NAME, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another audit is writing to {out}; wait for it to finish or choose another --out") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class AuditStore:
    """The audit's results table (one connection; the driver is its only writer)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "AuditStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def status(self, sha256: str, settings: str) -> str | None:
        row = self.db.execute("SELECT status FROM results WHERE sha256=? AND settings=?", (sha256, settings)).fetchone()
        return row[0] if row else None

    def mark_running(self, sha256: str, settings: str, path: str, settings_json: dict[str, Any]) -> None:
        """Record a dispatch before the model runs (a row killed here stays `running`: not done)."""
        self.db.execute(
            "INSERT INTO results (sha256, settings, path, status, attempts, settings_json, updated) "
            "VALUES (?, ?, ?, 'running', 1, ?, ?) ON CONFLICT (sha256, settings) DO UPDATE SET "
            "status='running', path=excluded.path, attempts=attempts+1, error=NULL, updated=excluded.updated",
            (sha256, settings, path, json.dumps(settings_json), time.time()))

    def write(self, sha256: str, settings: str, result: dict[str, Any], *, report_dir: str | None = None) -> None:
        """Store a finished result (status done | unsafe | failed); committed on return."""
        if result["status"] not in FINISHED:
            raise ValueError(f"a finished result needs status in {FINISHED}, got {result['status']!r}")
        self.db.execute(
            "UPDATE results SET format=?, status=?, file_safety=?, file_findings=?, verdict=?, error=?, seconds=?, "
            "report_dir=?, updated=? WHERE sha256=? AND settings=?",
            (result.get("format"), result["status"], result.get("file_safety"), json.dumps(result.get("file_findings") or []),
             None if result.get("verdict") is None else json.dumps(result["verdict"]), result.get("error"),
             result.get("seconds"), report_dir, time.time(), sha256, settings))

    def rows(self, keys: Iterable[tuple[str, str]] | None = None) -> list[dict[str, Any]]:
        """Rows as dicts (JSON columns decoded), for the given keys in their order, or all."""
        cur = self.db.execute("SELECT * FROM results ORDER BY rowid")
        names = [d[0] for d in cur.description]
        table = {}
        for values in cur.fetchall():
            row = dict(zip(names, values))
            row["file_findings"] = json.loads(row["file_findings"] or "[]")
            row["verdict"] = None if row["verdict"] is None else json.loads(row["verdict"])
            table[(row["sha256"], row["settings"])] = row
        if keys is None:
            return list(table.values())
        return [table[k] for k in keys if k in table]
