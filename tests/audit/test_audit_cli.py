"""`poisonguard audit` bad input: one line on stderr and exit 2, before any worker starts."""

from __future__ import annotations

import pickle

import pytest

from poisonguard.cli import main


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture
def tiny_zoo(tmp_path, fake_filesafety):
    (tmp_path / "zoo" / "a").mkdir(parents=True)
    (tmp_path / "zoo" / "a" / "model.pt").write_bytes(pickle.dumps(1, protocol=4))
    return tmp_path / "zoo"


def test_empty_folder(tmp_path, capsys, fake_filesafety):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README").write_text("no models here")
    assert main(["audit", str(tmp_path / "empty"), "--data", "mnist5k", "--out", str(tmp_path / "out")]) == 2
    assert "no model files" in _one_error_line(capsys)


@pytest.mark.parametrize("text,expected", [
    ('{"path": "a/model.pt"}\n{"path": "missing.pt"}\n', "missing.pt"),
    ('{"path": "a/model.pt"}\nnot json\n', ":2: not a JSON object"),
    ('{"path": "a/model.pt", "color": "red"}\n', "unknown key"),
    ("path,arch\na/model.pt,mnist_cnn,extra\n", "expected 2 fields"),
    ("file,arch\na/model.pt,mnist_cnn\n", "header must name 'path'"),
])
def test_bad_manifest(tiny_zoo, tmp_path, capsys, text, expected):
    suffix = ".csv" if text.startswith(("path", "file")) else ".jsonl"
    manifest = tiny_zoo / f"manifest{suffix}"
    manifest.write_text(text)
    assert main(["audit", str(manifest), "--data", "mnist5k", "--out", str(tmp_path / "out")]) == 2
    assert expected in _one_error_line(capsys)


def test_manifest_lines_carry_their_own_arch_and_data(tiny_zoo):
    from poisonguard.audit import discover

    (tiny_zoo / "m.csv").write_text("path,arch,data\na/model.pt,lenet5,mnist5k\n")
    (tiny_zoo / "m.jsonl").write_text('# a comment\n{"path": "a/model.pt", "arch": "mnist_cnn"}\n\n')
    assert [(i.arch, i.data, i.format) for i in discover(tiny_zoo / "m.csv")] == [("lenet5", "mnist5k", "pickle")]
    assert [(i.arch, i.data) for i in discover(tiny_zoo / "m.jsonl")] == [("mnist_cnn", None)]


def test_a_manifest_never_chooses_code_to_run(tiny_zoo, tmp_path, capsys, monkeypatch):
    """A zoo that ships its own manifest named evil.py:build, and the audit imported it."""
    import poisonguard.audit.run as run

    marker = tmp_path / "RAN"
    (tiny_zoo / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef build(**kw):\n    return None\n")
    (tiny_zoo / "m.jsonl").write_text('{"path": "a/model.pt", "arch": "evil.py:build"}\n')
    monkeypatch.setattr(run, "run_audit", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("stopped by the test")))
    assert main(["audit", str(tiny_zoo / "m.jsonl"), "--data", "mnist5k", "--out", str(tmp_path / "out")]) == 2
    assert "a manifest never chooses code" in _one_error_line(capsys)
    assert not marker.exists()
    monkeypatch.chdir(tiny_zoo)  # typed by the user, the same file is allowed (the test stops before any run)
    assert main(["audit", str(tiny_zoo / "m.jsonl"), "--data", "mnist5k", "--out", str(tmp_path / "out"),
                 "--arch", "evil.py:build"]) == 3


@pytest.mark.parametrize("extra,expected", [
    (["--workers", "0"], "--workers must be at least 1"),
    (["--address", "127.0.0.1:9"], "no Ray head reachable"),
    (["--address", "nonsense"], "HOST:PORT"),
])
def test_bad_workers_or_address(tiny_zoo, tmp_path, capsys, extra, expected):
    assert main(["audit", str(tiny_zoo), "--data", "mnist5k", "--out", str(tmp_path / "out"), *extra]) == 2
    assert expected in _one_error_line(capsys)


@pytest.mark.parametrize("extra,expected", [
    (["--data", "no-such-data"], "no-such-data"),
    (["--data", "mnist5k", "--arch", "no_such_arch"], "no_such_arch"),
])
def test_bad_data_or_arch_stops_before_any_worker(tiny_zoo, tmp_path, capsys, extra, expected):
    assert main(["audit", str(tiny_zoo), "--out", str(tmp_path / "out"), *extra]) == 2
    assert expected in _one_error_line(capsys)


def test_text_data_is_refused_in_one_line(tiny_zoo, tmp_path, capsys):
    """A text model is a folder the file discovery would take apart: scan refers the user to `scan`."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("sport", "food"):
        (corpus / f"{name}.txt").write_text("one line\nanother line\n")
    for data in (["--data", str(corpus)], ["--data", "c.csv", "--text-column", "text"]):
        assert main(["audit", str(tiny_zoo), "--out", str(tmp_path / "out"), *data]) == 2
        assert "poisonguard scan FOLDER" in _one_error_line(capsys)


def test_out_must_not_be_the_audited_folder(tiny_zoo, capsys):
    assert main(["audit", str(tiny_zoo), "--data", "mnist5k", "--out", str(tiny_zoo)]) == 2
    assert "is the audited folder" in _one_error_line(capsys)


def test_verdict_options_reach_the_settings(tiny_zoo, tmp_path, monkeypatch):
    """--method, --fpr and --calibration mean what they mean for `poisonguard scan`."""
    import poisonguard.audit.run as run

    seen = {}

    def stop(items, settings, out, **kwargs):
        seen["settings"] = settings
        raise RuntimeError("stopped by the test")

    monkeypatch.setattr(run, "run_audit", stop)
    code = main(["audit", str(tiny_zoo), "--data", "mnist5k", "--out", str(tmp_path / "out"), "--method", "tabor",
                 "--fpr", "0.01", "--calibration", "none", "--reference-models", "5", "--steps", "7"])
    assert code == 3
    settings = seen["settings"]
    assert settings.methods == ("tabor",) and settings.fpr == 0.01 and settings.calibration == "none"
    plan = settings.scan_plan()
    assert plan.reference_models == 5 and plan.options == {"tabor": {}}  # tabor takes no generator steps


def test_another_commands_outputs_are_not_replaced_without_force(tiny_zoo, tmp_path, capsys):
    """Audit claimed its --out as no other command did: a `train` folder's report was replaced."""
    import json

    train = tmp_path / "train"
    train.mkdir()
    (train / ".poisonguard-out.json").write_text(json.dumps({"tool": "poisonguard", "command": "train", "inputs": {}}))
    (train / "report.json").write_text('{"command": "train"}')
    assert main(["audit", str(tiny_zoo), "--data", "mnist5k", "--out", str(train)]) == 2
    assert "poisonguard train" in _one_error_line(capsys)
    assert (train / "report.json").read_text() == '{"command": "train"}'


@pytest.mark.parametrize("extra,expected", [
    (["--fpr", "1"], "fpr must lie in (0, 1)"),
    (["--reference-models", "1"], "at least 2 reference models"),
])
def test_settings_the_parser_lets_through_are_one_line(tiny_zoo, tmp_path, capsys, extra, expected):
    assert main(["audit", str(tiny_zoo), "--data", "mnist5k", "--out", str(tmp_path / "out"), *extra]) == 2
    assert expected in _one_error_line(capsys)


def test_architectures_other_than_built_ins_pass_the_name_check(tiny_zoo, tmp_path, monkeypatch):
    """--arch torchvision:NAME and file.py:callable are what `scan` takes; audit refused them
    as unknown. A code file's path is made absolute for workers that start elsewhere."""
    import poisonguard.audit.run as run

    seen = []
    monkeypatch.setattr(run, "run_audit", lambda items, settings, out, **kw: (seen.append(settings), 1 / 0))
    (tmp_path / "net.py").write_text("def build(**kw):\n    return None\n")
    monkeypatch.chdir(tmp_path)
    for arch in ("torchvision:resnet18", "net.py:build"):
        assert main(["audit", str(tiny_zoo), "--data", "mnist5k", "--out", str(tmp_path / "out"), "--arch", arch]) == 4
    assert seen[0].arch == "torchvision:resnet18" and seen[1].arch == f"{tmp_path / 'net.py'}:build"
    from poisonguard.audit.cli import check_names
    from types import SimpleNamespace

    check_names([SimpleNamespace(settings=s, item=SimpleNamespace(is_model=True)) for s in seen])


def test_results_are_keyed_by_the_datas_contents_not_its_name(tmp_path, monkeypatch):
    """Resume reused verdicts after the data file was rewritten under the same name, and
    rescanned everything when the same file was typed another way."""
    import os

    import numpy as np

    from poisonguard.audit.settings import AuditSettings, absolute_if_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "d.npz", x=np.zeros((4, 8, 8), np.uint8), y=np.arange(4))
    typed = [AuditSettings(data=absolute_if_path(d)) for d in ("data/d.npz", "./data/d.npz", str(tmp_path / "data/d.npz"))]
    assert len({s.digest() for s in typed}) == 1 and os.path.isabs(typed[0].data)
    before = typed[0].digest()
    np.savez(tmp_path / "data" / "d.npz", x=np.full((4, 8, 8), 255, np.uint8), y=np.arange(4))
    assert AuditSettings(data=absolute_if_path("data/d.npz")).digest() != before
    assert AuditSettings(data="mnist5k").digest() == AuditSettings(data="mnist5k").digest()


def test_discovery_gives_absolute_paths_and_follows_model_links(tmp_path, fake_filesafety, monkeypatch):
    """A Hugging Face cache snapshot links pytorch_model.bin to ../../blobs/<hash>: every file
    was skipped ("no model files found"). A link named as a model is followed; one to another
    kind of file outside the folder is not. Paths are absolute (Ray workers may start elsewhere)."""
    import os

    from poisonguard.audit import discover

    blobs = tmp_path / "hub" / "blobs"
    snap = tmp_path / "hub" / "snapshots" / "abc"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    (blobs / "f00d").write_bytes(pickle.dumps(1, protocol=4))
    (snap / "pytorch_model.bin").symlink_to("../../blobs/f00d")
    (tmp_path / "secret.txt").write_text("not a model")
    (snap / "notes").symlink_to(tmp_path / "secret.txt")
    (snap / "loop.pt").symlink_to("loop.pt")  # a link to itself: skipped, not a crash
    monkeypatch.chdir(tmp_path)
    items = discover(os.path.relpath(snap))
    assert [os.path.basename(i.path) for i in items] == ["pytorch_model.bin"]
    assert all(os.path.isabs(i.path) for i in items)


def test_an_excel_csv_manifest_with_a_byte_order_mark(tiny_zoo):
    from poisonguard.audit import discover

    (tiny_zoo / "m.csv").write_bytes("\ufeffpath,arch\na/model.pt,lenet5\n".encode("utf-8"))
    assert [i.arch for i in discover(tiny_zoo / "m.csv")] == ["lenet5"]


def test_out_may_lie_inside_the_audited_folder(tiny_zoo, monkeypatch):
    import poisonguard.audit.run as run

    def stop(items, settings, out, **kwargs):
        raise RuntimeError("stopped by the test")

    monkeypatch.setattr(run, "run_audit", stop)
    assert main(["audit", str(tiny_zoo), "--data", "mnist5k", "--out", str(tiny_zoo / "audit-out")]) == 3


def test_a_second_audit_into_the_same_folder_is_refused_while_the_first_runs(tiny_zoo, tmp_path, capsys,
                                                                            monkeypatch):
    """Two audits into one --out dispatched the same models twice and interleaved their reports."""
    import poisonguard.audit.run as run
    from poisonguard.audit.store import only_writer

    out = tmp_path / "out"
    calls = []
    monkeypatch.setattr(run, "run_audit", lambda *a, **k: calls.append(1) or (_ for _ in ()).throw(RuntimeError("x")))
    from poisonguard.cli.inputs import guard_out

    guard_out(str(out), command="audit", force=False, match_inputs=False)  # the first audit claims its folder
    with only_writer(out):  # and is still running
        assert main(["audit", str(tiny_zoo), "--data", "mnist5k", "--out", str(out)]) == 2
        assert "another audit is writing" in _one_error_line(capsys)
    assert calls == []
    assert main(["audit", str(tiny_zoo), "--data", "mnist5k", "--out", str(out)]) == 3  # free again once it ends
    assert calls == [1]
