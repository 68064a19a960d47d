"""An audit's outputs: `report.json["audit"]`, `report.html` (one row per model, findings
first, each linking its own scan report) and `audit.sarif` (SARIF 2.1.0 for code scanning)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from poisonguard import __version__
from poisonguard.errors import EXIT_FINDING, EXIT_INCOMPLETE, EXIT_OK
from poisonguard.utils import atomic_write_text

SARIF_NAME = "audit.sarif"
# Findings in the order the HTML table shows them.
ORDER = ("unsafe", "backdoored", "failed", "clean", "skipped")
RULES = {
    "unsafe": ("PG-AUDIT-UNSAFE-FILE", "UnsafeModelFile", "error",
               "The file would run code or attack the reader when loaded; it was not loaded."),
    "backdoored": ("PG-AUDIT-BACKDOOR", "BackdooredModel", "error",
                   "The behavioural scan found a planted trigger (a class reachable by a tiny input change)."),
    "failed": ("PG-AUDIT-INCOMPLETE", "ModelNotChecked", "warning",
               "The model could not be checked (corrupt file, wrong data, crash or timeout)."),
}


def finding(row: dict[str, Any]) -> str:
    """unsafe | backdoored | failed | clean | skipped (an array file: checked, nothing to scan)."""
    if row["file_safety"] == "unsafe":
        return "unsafe"
    if row["status"] == "failed":
        return "failed"
    if (row["verdict"] or {}).get("backdoored"):
        return "backdoored"
    return "clean" if row["status"] == "done" else "skipped"


def exit_code(rows: list[dict[str, Any]]) -> int:
    """1 when anything is unsafe or backdoored; else 3 when a model could not be checked; else 0."""
    found = {finding(r) for r in rows}
    if found & {"unsafe", "backdoored"}:
        return EXIT_FINDING
    return EXIT_INCOMPLETE if "failed" in found else EXIT_OK


def audit_block(rows: list[dict[str, Any]], resumed: int) -> dict[str, Any]:
    keys = ("path", "sha256", "format", "file_safety", "file_findings", "verdict", "status", "error", "seconds", "report")
    return {"models": [{k: r[k] for k in keys} for r in rows], "resumed": int(resumed),
            "counts": dict(Counter(finding(r) for r in rows))}


def summary_sentence(rows: list[dict[str, Any]], resumed: int) -> str:
    c = Counter(finding(r) for r in rows)
    parts = [f"{c['unsafe']} unsafe file(s) (never loaded)", f"{c['backdoored']} backdoored model(s)",
             f"{c['clean']} clean", f"{c['failed']} not checked"]
    if c["skipped"]:
        parts.append(f"{c['skipped']} array file(s) checked for file safety only")
    return f"{len(rows)} file(s) audited: " + ", ".join(parts) + f"; {resumed} taken from an earlier run."


def _html_table(rows: list[dict[str, Any]]) -> str:
    from markupsafe import escape

    def verdict_text(r):
        v = r["verdict"]
        if v is None:
            return "—"
        return ("BACKDOORED, target " + ", ".join(str(t) for t in v.get("targets", []))) if v.get("backdoored") else "clean"

    body = []
    for r in sorted(rows, key=lambda r: (ORDER.index(finding(r)), r["path"])):
        name = escape(r["path"])
        link = f'<a href="{escape(r["report"])}">{name}</a>' if r["report"] else str(name)
        notes = "; ".join(r["file_findings"]) or (r["error"] or "")
        seconds = "—" if r["seconds"] is None else f"{r['seconds']:.1f}"
        body.append(f'<tr class="{finding(r)}"><td>{escape(finding(r))}</td><td>{link}</td><td>{escape(r["format"])}</td>'
                    f'<td>{escape(r["file_safety"] or "—")}</td><td>{escape(verdict_text(r))}</td>'
                    f'<td>{seconds}</td><td>{escape(notes)}</td></tr>')
    head = "".join(f"<th>{h}</th>" for h in ("finding", "file (its scan report)", "format", "file safety",
                                             "behaviour", "seconds", "findings / error"))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def write_reports(out: Path, rows: list[dict[str, Any]], *, resumed: int, root: Path, settings: dict[str, Any],
                  extra: dict[str, Any] | None = None) -> Path:
    """report.json, report.html and audit.sarif in `out`; returns the HTML path."""
    from poisonguard.report import Report

    report = Report("audit")
    report.set("audit", audit_block(rows, resumed))
    report.set("audit_settings", {**settings, **(extra or {})})
    report.add_section("Audit of a model zoo", _html_table(rows), summary=summary_sentence(rows, resumed), order=10)
    path = report.write(out)
    atomic_write_text(out / SARIF_NAME, json.dumps(sarif(rows, root=root), indent=2))
    return path


def _uri(path: str, root: Path) -> tuple[str, str | None]:
    p = Path(path).resolve()
    try:
        return p.relative_to(root.resolve()).as_posix(), "AUDITROOT"
    except ValueError:
        return p.as_uri(), None


def sarif(rows: list[dict[str, Any]], *, root: Path) -> dict[str, Any]:
    """A SARIF 2.1.0 log: one result per unsafe file, backdoored model and model not checked."""
    rule_keys = list(RULES)
    rules = [{"id": rid, "name": name, "shortDescription": {"text": text}, "defaultConfiguration": {"level": level}}
             for rid, name, level, text in RULES.values()]
    results = []
    for r in rows:
        kind = finding(r)
        if kind not in RULES:
            continue
        rid, _, level, _ = RULES[kind]
        if kind == "unsafe":
            text = "Unsafe file, not loaded: " + ("; ".join(r["file_findings"]) or "refused by the file check")
        elif kind == "backdoored":
            targets = ", ".join(str(t) for t in r["verdict"].get("targets", []))
            text = f"Backdoor found: target class(es) {targets} (score {r['verdict'].get('score', 0):.3g})"
        else:
            text = f"Model not checked: {r['error'] or 'unknown error'}"
        uri, base = _uri(r["path"], root)
        location = {"uri": uri, **({"uriBaseId": base} if base else {})}
        results.append({"ruleId": rid, "ruleIndex": rule_keys.index(kind), "level": level, "message": {"text": text},
                        "locations": [{"physicalLocation": {"artifactLocation": location}}],
                        "partialFingerprints": {"sha256/v1": r["sha256"]},
                        "properties": {"format": r["format"], "status": r["status"]}})
    run = {"tool": {"driver": {"name": "poisonguard", "version": __version__, "rules": rules}},
           "originalUriBaseIds": {"AUDITROOT": {"uri": root.resolve().as_uri() + "/"}},
           "invocations": [{"executionSuccessful": not any(finding(r) == "failed" for r in rows)}],
           "results": results}
    return {"$schema": "https://json.schemastore.org/sarif-2.1.0.json", "version": "2.1.0", "runs": [run]}
