"""Stand-ins for the audit's two halves, so tests can steer what each file does.

`fake_sniff` / `fake_inspect` stand in for `poisonguard.filesafety` in tests of the audit's
plumbing (a file is unsafe when any pickle in it names `system`); `fake_scan` stands in for
the behavioural scan: it reads the file name (crash / hang / backdoor) and logs each call.
"""

from __future__ import annotations

import hashlib
import os
import time
import zipfile
from pathlib import Path

from poisonguard.filesafety import FileSafety


def fake_sniff(path) -> str:
    head = Path(path).read_bytes()[:4]
    if head.startswith(b"PK"):
        return "torch-zip"
    if head[:1] == b"\x80":
        return "pickle"
    return "unknown"


def _pickles(path: Path) -> list[bytes]:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return [archive.read(n) for n in archive.namelist() if n.endswith(".pkl")]
    return [path.read_bytes()]


def fake_inspect(path) -> FileSafety:
    path = Path(path)
    data = path.read_bytes()
    try:
        hostile = any(b"system" in blob for blob in _pickles(path))
    except zipfile.BadZipFile:
        hostile = False
    return FileSafety(str(path), hashlib.sha256(data).hexdigest(), fake_sniff(path), not hostile,
                      ("imports posix.system",) if hostile else ())


def fake_scan(path, settings, *, log: str | None = None, delay: float = 0.0):
    """Verdict from the file's folder name; appends "start <path>" / "end <path>" to `log`."""
    import torch

    def note(word):
        if log:
            with open(log, "a") as handle:
                handle.write(f"{word} {path}\n")

    note("start")
    name = Path(path).parent.name
    if "crash" in name:
        os._exit(7)  # the worker process dies mid-model
    if "hang" in name:
        time.sleep(3600)
    time.sleep(delay)
    backdoored = "backdoor" in name
    note("end")
    return ({"backdoored": backdoored, "targets": [0] if backdoored else [], "score": 3.0 if backdoored else 0.5,
             "false_positive_rate": None, "evidence": [], "threads": torch.get_num_threads()}, None)


def main(argv=None) -> int:
    """`python audit_fakes.py ZOO OUT LOG DELAY`: an in-process audit with the stand-ins (for kill tests)."""
    import sys

    import poisonguard.filesafety as filesafety
    from poisonguard.audit import AuditSettings, discover
    from poisonguard.audit.run import run_audit
    from poisonguard.audit.runner import InProcessExecutor
    from poisonguard.audit.worker import audit_one

    zoo, out, log, delay = (argv or sys.argv[1:])[:4]
    filesafety.sniff_format = fake_sniff
    task = lambda item, s: audit_one(item, s, inspect=fake_inspect,
                                     scan=lambda p, st: fake_scan(p, st, log=log, delay=float(delay)))
    outcome = run_audit(discover(zoo), AuditSettings(), out, make_executor=lambda: InProcessExecutor(task))
    print(outcome.resumed, outcome.scanned)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
