"""`poisonguard audit` in-process: the right row per file, exit codes, resume, the outputs agree."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

import poisonguard.filesafety as filesafety
from poisonguard.audit import AuditSettings, discover
from poisonguard.audit.report import exit_code, finding, write_reports
from poisonguard.audit.run import run_audit
from poisonguard.audit.runner import InProcessExecutor
from poisonguard.audit.worker import audit_one

# The real file check, kept before any test puts a stand-in in its place.
REAL_INSPECT = filesafety.inspect_file
SCHEMA = Path(__file__).with_name("sarif-2.1.0-subset.schema.json")
# A tiny but real behavioural scan, the way `poisonguard scan` does it: Neural Cleanse, 3 epochs
# over 2% of the training part (80 images), the verdict calibrated on 3 clean references.
TINY = AuditSettings(data="mnist5k", methods=("neural_cleanse",), epochs=3, clean_fraction=0.02, reference_models=3,
                     device="cpu")


def _never():
    raise AssertionError("an executor was started although nothing was left to do")


@pytest.fixture(scope="module")
def audited(zoo, tmp_path_factory):
    """The zoo audited once with the real file check and the real scan."""
    out = tmp_path_factory.mktemp("audit-out")
    items = discover(zoo["root"], exclude=out)
    outcome = run_audit(items, TINY, out, make_executor=lambda: InProcessExecutor(audit_one))
    write_reports(out, outcome.rows, resumed=outcome.resumed, root=zoo["root"], settings=TINY.to_dict())
    return {"out": out, "items": items, "outcome": outcome}


def _by_folder(rows):
    return {Path(r["path"]).parent.name: r for r in rows}


def test_each_file_gets_its_row_and_the_audit_exits_1(audited, zoo):
    rows = _by_folder(audited["outcome"].rows)
    assert set(rows) == set(zoo["paths"])  # notes.md and metadata.json are not model files
    for name in ("backdoor_a", "backdoor_b"):
        assert rows[name]["status"] == "done" and rows[name]["verdict"]["backdoored"], rows[name]
        # The planted target is found; at this tiny budget (3 inversion epochs, 80 images) a second
        # class may come along (class 8 since the references train 60 epochs with shifts).
        assert 0 in rows[name]["verdict"]["targets"] and len(rows[name]["verdict"]["targets"]) <= 2
    for name in ("clean_a", "clean_b"):
        assert rows[name]["status"] == "done" and not rows[name]["verdict"]["backdoored"], rows[name]
    for name in ("hostile_pickle", "hostile_torch"):
        assert rows[name]["file_safety"] == "unsafe" and rows[name]["status"] == "skipped"
        assert rows[name]["verdict"] is None and rows[name]["file_findings"]
    # A truncated file is a row of its own: refused by the file check (fail closed) or failed to load.
    assert rows["truncated"]["status"] in ("failed", "skipped") and rows["truncated"]["verdict"] is None
    assert rows["truncated"]["error"] or rows["truncated"]["file_findings"]
    assert rows["no_metadata"]["status"] == "failed" and "architecture" in rows["no_metadata"]["error"]
    assert not zoo["marker"].exists()  # no payload ran
    assert exit_code(audited["outcome"].rows) == 1


def test_exit_codes_follow_the_findings(audited):
    rows = _by_folder(audited["outcome"].rows)
    assert exit_code([rows["clean_a"], rows["clean_b"]]) == 0
    assert exit_code([rows["clean_a"], rows["no_metadata"]]) == 3
    assert exit_code([rows["no_metadata"], rows["hostile_pickle"]]) == 1
    assert exit_code([rows["no_metadata"], rows["backdoor_a"]]) == 1


def test_each_scanned_model_has_its_own_scan_report(audited):
    calibration_keys: dict[str, str] = {}
    for row in audited["outcome"].rows:
        if row["status"] == "done":
            own = json.loads((audited["out"] / Path(row["report"]).parent / "report.json").read_text())
            assert own["command"] == "scan" and own["verdict"] == row["verdict"]
            # The verdict `poisonguard scan` gives: calibrated on clean references, computed once and shared.
            assert row["verdict"]["calibrated"] and own["calibration"]["reference_models"] == TINY.reference_models
            assert own["calibration"]["key"] == calibration_keys.setdefault("key", own["calibration"]["key"])
            assert own["model"]["sha256"] == row["sha256"]
        else:
            assert row["report"] is None


def test_rerun_with_nothing_left_starts_no_workers(audited):
    outcome = run_audit(audited["items"], TINY, audited["out"], make_executor=_never)
    assert outcome.resumed == len(audited["items"]) and outcome.scanned == 0
    assert [r["verdict"] for r in outcome.rows] == [r["verdict"] for r in audited["outcome"].rows]


def test_failed_rows_are_retried_only_when_asked(audited):
    seen = []

    class Recording(InProcessExecutor):
        def run(self, jobs, on_start, on_result, **kwargs):
            seen.extend(Path(j.item.path).parent.name for j in jobs)
            super().run(jobs, on_start, on_result, **kwargs)

    outcome = run_audit(audited["items"], TINY, audited["out"], make_executor=lambda: Recording(audit_one),
                        retry_failed=True)
    failed = [Path(r["path"]).parent.name for r in audited["outcome"].rows if r["status"] == "failed"]
    assert "no_metadata" in failed and seen == failed
    assert outcome.resumed == len(audited["items"]) - len(failed)


def test_other_settings_are_another_key(audited):
    assert TINY.digest() != replace(TINY, epochs=4).digest()
    assert TINY.digest() != replace(TINY, fpr=0.01).digest()
    assert TINY.digest() != replace(TINY, methods=("neural_cleanse", "deepinspect")).digest()
    assert TINY.digest() == replace(TINY, device="cuda").digest()


def test_database_matches_report_json(audited):
    report = json.loads((audited["out"] / "report.json").read_text())
    models = report["audit"]["models"]
    db = sqlite3.connect(audited["out"] / "audit.db")
    db.row_factory = sqlite3.Row
    stored = {r["sha256"]: dict(r) for r in db.execute("SELECT * FROM results")}
    assert len(stored) == len(models)
    for m in models:
        row = stored[m["sha256"]]
        assert row["path"] == m["path"] and row["format"] == m["format"]
        assert row["file_safety"] == m["file_safety"] and json.loads(row["file_findings"]) == m["file_findings"]
        assert (None if row["verdict"] is None else json.loads(row["verdict"])) == m["verdict"]
        assert row["error"] == m["error"]
        expected = "failed" if row["status"] == "failed" else ("done" if row["verdict"] is not None else "skipped")
        assert m["status"] == expected
        if row["status"] != "failed":  # (a failed row may have been retried since, by another test)
            assert row["seconds"] == pytest.approx(m["seconds"])
            assert row["attempts"] == 1  # each file audited exactly once


def test_html_lists_findings_first_with_links(audited):
    html = (audited["out"] / "report.html").read_text()
    rows = audited["outcome"].rows
    order = [html.index(Path(r["path"]).parent.name + "/") for r in sorted(rows, key=lambda r: r["path"])]
    assert len(set(order)) == len(rows)
    positions = {finding(r): [] for r in rows}
    for r in rows:
        positions[finding(r)].append(html.index(str(Path(r["path"]))))
    assert max(positions["unsafe"]) < min(positions["backdoored"]) < min(positions["clean"])
    for r in rows:
        if r["report"]:
            assert f'href="{r["report"]}"' in html


def test_sarif_validates_and_lists_every_finding(audited):
    jsonschema = pytest.importorskip("jsonschema")
    log = json.loads((audited["out"] / "audit.sarif").read_text())
    jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).validate(log)
    results = log["runs"][0]["results"]
    kinds = sorted(r["ruleId"] for r in results)
    expected = {"unsafe": "PG-AUDIT-UNSAFE-FILE", "backdoored": "PG-AUDIT-BACKDOOR", "failed": "PG-AUDIT-INCOMPLETE"}
    assert kinds == sorted(expected[finding(r)] for r in audited["outcome"].rows if finding(r) in expected)
    assert kinds.count("PG-AUDIT-BACKDOOR") == 2 and kinds.count("PG-AUDIT-UNSAFE-FILE") >= 2
    rules = log["runs"][0]["tool"]["driver"]["rules"]
    assert all(rules[r["ruleIndex"]]["id"] == r["ruleId"] for r in results)
    assert all(not r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"].startswith("/") for r in results)
    with pytest.raises(jsonschema.ValidationError):  # the schema does check something
        jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).validate({**log, "version": "2.0.0"})


def test_same_bytes_twice_are_scanned_once(zoo, tmp_path, fake_filesafety):
    import shutil

    zoo_copy = tmp_path / "zoo"
    for name in ("clean_a", "backdoor_a"):
        shutil.copytree(zoo["root"] / name, zoo_copy / name)
    shutil.copytree(zoo["root"] / "clean_a", zoo_copy / "clean_copy")
    log = tmp_path / "scans.log"
    task = lambda item, s: audit_one(item, s, scan=lambda p, st: fake_filesafety.fake_scan(p, st, log=str(log)))
    outcome = run_audit(discover(zoo_copy), TINY, tmp_path / "out", make_executor=lambda: InProcessExecutor(task))
    assert len(outcome.rows) == 3 and outcome.scanned == 2
    assert log.read_text().count("end ") == 2
    assert outcome.rows[1]["verdict"] == outcome.rows[2]["verdict"]  # clean_a and clean_copy


def test_real_file_check_refuses_a_hostile_pickle_and_passes_a_state_dict(zoo, tmp_path):
    """Uses `poisonguard.filesafety.inspect_file` itself, even where another test put a stand-in in its place."""
    inspect_file = REAL_INSPECT
    assert inspect_file(zoo["paths"]["clean_a"]).safe
    assert not inspect_file(zoo["paths"]["hostile_pickle"]).safe
    assert not inspect_file(zoo["paths"]["hostile_torch"]).safe
    items = [i for i in discover(zoo["root"]) if Path(i.path).parent.name in ("clean_a", "hostile_pickle", "hostile_torch")]
    import audit_fakes

    task = lambda item, s: audit_one(item, s, inspect=inspect_file, scan=audit_fakes.fake_scan)
    outcome = run_audit(items, TINY, tmp_path / "out", make_executor=lambda: InProcessExecutor(task))
    assert [finding(r) for r in outcome.rows] == ["clean", "unsafe", "unsafe"]
    assert not zoo["marker"].exists()


def test_a_failed_row_says_whether_the_file_or_poisonguard_failed():
    # A .pt2 crash in the scan read like any corrupt file; a bug must say it is one, and a loader's
    # own safety finding is an unsafe row, not a failure.
    from poisonguard.audit.discover import AuditItem
    from poisonguard.errors import UnsafeFileError, UserError
    from poisonguard.filesafety import FileSafety

    item = AuditItem(path="/zoo/m.pt2", format="torch.export")
    safe = lambda path: FileSafety(path, "0" * 64, "torch.export", True)

    def scan_raising(exc):
        def scan(path, settings):
            raise exc
        return scan

    bug = audit_one(item, AuditSettings(), inspect=safe, scan=scan_raising(AttributeError("no num_batches_tracked")))
    assert bug["status"] == "failed" and bug["error"].startswith("internal error (a bug in poisonguard")
    assert "AttributeError: no num_batches_tracked" in bug["error"]
    mine = audit_one(item, AuditSettings(), inspect=safe, scan=scan_raising(UserError("cannot read model file")))
    assert mine["status"] == "failed" and mine["error"] == "UserError: cannot read model file"
    unsafe = audit_one(item, AuditSettings(), inspect=safe, scan=scan_raising(UnsafeFileError("/zoo/m.pt2", ["runs code"])))
    assert unsafe["status"] == "unsafe" and unsafe["file_safety"] == "unsafe" and unsafe["file_findings"] == ["runs code"]
