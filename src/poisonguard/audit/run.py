"""The audit's driver: key every file, skip what `audit.db` already holds, run the rest, and
store each result the moment it arrives."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from poisonguard import utils
from poisonguard.audit.discover import AuditItem
from poisonguard.audit.runner import Job
from poisonguard.audit.settings import AuditSettings
from poisonguard.audit.store import AuditStore
from poisonguard.errors import UserError
from poisonguard.utils import atomic_write_text

log = logging.getLogger(__name__)

DB_NAME = "audit.db"
MODELS_DIR = "models"


@dataclass
class AuditOutcome:
    """Every audited file's row (in the order given) and how many came from an earlier run."""

    rows: list[dict[str, Any]]
    resumed: int
    scanned: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


class _Progress:
    """Models done, flagged and failed, with tqdm's ETA, on a terminal; silent otherwise."""

    def __init__(self, total: int) -> None:
        self.counts = {"flagged": 0, "failed": 0}
        self.bar = None
        if total and not utils.QUIET and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="audit", unit="model", leave=False)

    def update(self, result: dict[str, Any]) -> None:
        if result["status"] == "failed":
            self.counts["failed"] += 1
        elif result["status"] == "unsafe" or (result.get("verdict") or {}).get("backdoored"):
            self.counts["flagged"] += 1
        if self.bar is not None:
            self.bar.set_postfix(self.counts, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def report_dir_name(key: tuple[str, str]) -> str:
    return f"{MODELS_DIR}/{key[0][:16]}-{key[1]}"


def run_audit(items: list[AuditItem], settings: AuditSettings, out: str | Path, *,
              make_executor: Callable[[], Any], retry_failed: bool = False,
              before_run: Callable[[list[Job]], None] | None = None,
              while_starting: Callable[[list[Job]], None] | None = None) -> AuditOutcome:
    """Audit `items` into `out` (audit.db and one scan report folder per model).

    `before_run(jobs)` (quick checks of the user's options), `make_executor()` and
    `while_starting(jobs)` (slow checks, e.g. that the data loads, which the executor runs
    before any model while its workers start) are called only when something is left to do,
    so a finished audit's rerun loads nothing and starts no workers.
    """
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    keyed: list[tuple[AuditItem, tuple[str, str]]] = []
    jobs: list[Job] = []
    resumed = 0
    with AuditStore(out / DB_NAME) as store:
        seen = set()
        for item in items:
            model_settings = settings.for_model(arch=item.arch, data=item.data)
            try:
                digest = utils.sha256_file(item.path)
            except OSError as exc:
                raise UserError(f"cannot read {item.path}: {exc.strerror or exc}") from exc
            key = (digest, model_settings.digest())
            keyed.append((item, key))
            if key in seen:  # the same bytes twice: audited once, reported under each path
                continue
            seen.add(key)
            status = store.status(*key)
            if status in ("done", "unsafe") or (status == "failed" and not retry_failed):
                resumed += 1
                continue
            jobs.append(Job(key, item, model_settings))
        if resumed:
            log.info("audit: %d of %d files already in %s; %d to do", resumed, len(seen), out / DB_NAME, len(jobs))
        progress = _Progress(len(jobs))

        def on_start(job: Job) -> None:
            store.mark_running(*job.key, job.item.path, job.settings.to_dict())

        def on_result(job: Job, result: dict[str, Any]) -> None:
            folder = None
            if result.get("report_json") is not None:
                # The model's own scan report first: a `done` row always has its folder.
                folder = report_dir_name(job.key)
                atomic_write_text(out / folder / "report.json", result["report_json"])
                atomic_write_text(out / folder / "report.html", result["report_html"])
            store.write(*job.key, result, report_dir=folder)
            progress.update(result)

        if jobs and before_run is not None:
            before_run(jobs)
        checks = (lambda: while_starting(jobs)) if while_starting is not None else None
        try:
            if jobs:
                make_executor().run(jobs, on_start, on_result, before=checks)
        finally:
            progress.close()
        table = {(r["sha256"], r["settings"]): r for r in store.rows()}
    rows = [_row(item, key, table.get(key)) for item, key in keyed]
    return AuditOutcome(rows, resumed, len(jobs), round(time.perf_counter() - start, 3))


def _row(item: AuditItem, key: tuple[str, str], stored: dict[str, Any] | None) -> dict[str, Any]:
    """report.json's row for one file (status done | failed | skipped, as the issue names them)."""
    base = {"path": item.path, "sha256": key[0], "settings": key[1], "format": item.format, "file_safety": None,
            "file_findings": [], "verdict": None, "status": "failed", "error": "not finished", "seconds": None,
            "report": None, "attempts": 0}
    if stored is None:
        return base
    base["attempts"] = stored["attempts"]
    if stored["status"] not in ("done", "unsafe", "failed"):
        return base
    status = "failed" if stored["status"] == "failed" else ("done" if stored["verdict"] is not None else "skipped")
    base.update(format=stored["format"] or item.format, file_safety=stored["file_safety"],
                file_findings=stored["file_findings"], verdict=stored["verdict"], status=status,
                error=stored["error"], seconds=stored["seconds"],
                report=f"{stored['report_dir']}/report.html" if stored["report_dir"] else None)
    return base
