"""Auditing one file, as a worker does it: the static file check, then (only for a safe model
file) the behavioural scan. Never raises: whatever goes wrong becomes a `failed` result."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from poisonguard.audit.discover import AuditItem
from poisonguard.audit.settings import AuditSettings
from poisonguard.errors import UnsafeFileError, UserError

log = logging.getLogger(__name__)
INTERNAL = ("internal error (a bug in poisonguard, not a finding; `poisonguard scan` on this file prints the "
            "traceback to report):")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def audit_one(item: AuditItem, settings: AuditSettings, *, inspect: Callable | None = None,
              scan: Callable | None = None) -> dict[str, Any]:
    """The result of auditing `item`: a dict with status done | unsafe | failed (see `store`).

    `inspect` and `scan` default to `filesafety.inspect_file` and `behaviour.scan_model`
    (tests pass stand-ins). An unsafe file is never handed to the loader.
    """
    start = time.perf_counter()
    result: dict[str, Any] = {"format": item.format, "file_safety": None, "file_findings": [], "verdict": None,
                              "error": None, "report_json": None, "report_html": None}
    try:
        if inspect is None:
            from poisonguard.filesafety import inspect_file as inspect
        safety = inspect(item.path)
        result.update(format=safety.format, file_safety="safe" if safety.safe else "unsafe",
                      file_findings=list(safety.findings))
        if not safety.safe:
            result["status"] = "unsafe"
        elif not item.is_model:
            result["status"] = "done"  # arrays only: nothing to scan for a backdoor
        else:
            if scan is None:
                from poisonguard.audit.behaviour import scan_model as scan
            verdict, report = scan(item.path, settings)
            result.update(status="done", verdict=verdict,
                          report_json=report.to_json() if report is not None else None,
                          report_html=report.to_html() if report is not None else None)
    except UnsafeFileError as exc:  # a loader's own check (e.g. the trial load) found what the static one did not
        result.update(status="unsafe", file_safety="unsafe", file_findings=list(exc.findings))
    except UserError as exc:  # the file or the settings: a corrupt file, a model that is no classifier
        log.debug("audit of %s failed", item.path, exc_info=True)
        result.update(status="failed", error=_first_line(exc))
    except Exception as exc:  # a bug in poisonguard: one failed row that says so, and the traceback in the log
        log.warning("audit of %s: internal error", item.path, exc_info=True)
        result.update(status="failed", error=f"{INTERNAL} {_first_line(exc)}")
    result["seconds"] = round(time.perf_counter() - start, 3)
    return result
