"""Issue 13/18 corpus: no payload runs, every hostile file is unsafe, no benign file is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from poisonguard.errors import UnsafeFileError
from poisonguard.filesafety import inspect_file, require_safe, sniff_format

PYTHON = sys.executable


def _markers(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "markers").iterdir())


def test_corpus_sizes(corpus):
    _, files = corpus
    hostile = [n for n, (_, h) in files.items() if h]
    assert len(hostile) >= 30 and len(files) - len(hostile) >= 20


def test_every_hostile_file_unsafe_and_every_benign_file_safe(corpus):
    root, files = corpus
    wrong = {}
    for name, (path, hostile) in files.items():
        verdict = inspect_file(path)
        if verdict.safe == hostile or (hostile and not verdict.findings):
            wrong[name] = verdict.findings
        assert len(verdict.sha256) == 64
    assert wrong == {}
    assert _markers(root) == []


def test_require_safe_raises_for_hostile_and_runs_nothing(corpus):
    root, files = corpus
    for name, (path, hostile) in files.items():
        if hostile:
            with pytest.raises(UnsafeFileError) as info:
                require_safe(path)
            assert info.value.findings
        else:
            assert require_safe(path).safe
    assert _markers(root) == []


def test_formats_come_from_bytes_not_names(corpus):
    from filesafety_corpus import BENIGN_FORMATS

    root, _ = corpus
    for name, expected in BENIGN_FORMATS.items():
        assert sniff_format(root / "benign" / name) == expected, name
    assert sniff_format(root / "hostile" / "setstate_named.safetensors") == "torchscript"
    assert sniff_format(root / "hostile" / "payload_named.safetensors") == "torch-zip"


def test_findings_name_what_the_file_imports(corpus):
    root, _ = corpus
    hostile = root / "hostile"
    assert any("pkgutil.resolve_name" in f for f in inspect_file(hostile / "pkgutil_resolve_name.pkl").findings)
    assert any("os.system" in f for f in inspect_file(hostile / "memo_trick.pkl").findings)
    assert any("__setstate__" in f for f in inspect_file(hostile / "setstate_from_file.pt").findings)
    assert any("aten::save" in f for f in inspect_file(hostile / "forward_saves.pt").findings)
    assert any("aten::save" in f for f in inspect_file(hostile / "hook_getattr_saves.pt").findings)
    assert any("zero strides" in f for f in inspect_file(hostile / "broadcast_bomb.pt").findings)
    assert any("over the limit" in f for f in inspect_file(hostile / "broadcast_bomb_legacy.pt").findings)
    assert any("use_pickle" in f for f in inspect_file(hostile / "pt2_use_pickle.pt2").findings)


def test_special_files_are_a_user_error(tmp_path):
    from poisonguard.errors import UserError

    link = tmp_path / "mem.pt"
    link.symlink_to("/proc/self/mem")
    with pytest.raises(UserError):
        inspect_file(link)
    with pytest.raises(UserError):
        inspect_file(tmp_path / "missing.pt")


def test_cli_inspect_file_json_and_exit_codes(corpus, tmp_path, capsys):
    from poisonguard.cli import main

    root, _ = corpus
    benign = [str(root / "benign" / n) for n in ("state_dict.pt", "model.onnx", "exported.pt2")]
    assert main(["inspect-file", *benign, "--out", str(tmp_path / "out")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [f["file_safety"] for f in report["files"]] == ["safe"] * 3
    assert json.loads((tmp_path / "out" / "report.json").read_text())["unsafe"] == 0
    assert main(["inspect-file", benign[0], "--out", str(root / "benign")]) == 2  # never into an input's folder
    capsys.readouterr()
    assert main(["inspect-file", benign[0], str(root / "hostile" / "os_system.pkl")]) == 1
    bad = json.loads(capsys.readouterr().out)
    assert bad["unsafe"] == 1 and bad["files"][1]["file_findings"]
    assert main(["inspect-file", "--exit-zero", str(root / "hostile" / "os_system.pkl")]) == 0
    assert json.loads(capsys.readouterr().out)["unsafe"] == 1
    assert main(["inspect-file", str(tmp_path / "nope.pt")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not found" in err
    assert _markers(root) == []


_CONTROL = r"""
import pickle, sys, warnings
warnings.simplefilter("ignore")
for kind, path in zip(sys.argv[1::2], sys.argv[2::2]):
    try:
        if kind == "pickle":
            pickle.loads(open(path, "rb").read())
            continue
        import torch
        if kind == "torchload":
            torch.load(path, weights_only=False)
        elif kind == "jit":
            torch.jit.load(path)(torch.randn(2, 4))
        elif kind == "export":
            torch.export.load(path).module()(torch.randn(2, 4))
    except Exception:
        pass
"""


def test_the_payloads_are_real(corpus, tmp_path):
    """Loaded the unsafe way (in a child process), the same files do create their markers."""
    import io
    import zipfile

    root, _ = corpus
    control = root / "control"
    control.mkdir(exist_ok=True)
    cases = {"os_system.pkl": "pickle", "memo_trick.pkl": "pickle", "pkgutil_resolve_name.pkl": "pickle",
             "unresolved_stack_global.pkl": "pickle", "marshal_function.pkl": "pickle", "importlib_chain.pkl": "pickle",
             "setstate_from_file.pt": "jit", "forward_saves.pt": "jit", "hook_getattr_saves.pt": "jit",
             "pt2_guards_code.pt2": "export", "pt2_forward_arg_name.pt2": "export", "pt2_parameter_name.pt2": "export",
             "pt2_sympy_expr.pt2": "export", "pt2_opaque_constant.pt2": "export",
             "legacy_sys_info.pt": "torchload", "payload_in_state_dict.pt": "torchload"}
    jobs: list[list[str]] = [[], []]
    for name, kind in cases.items():
        data = (root / "hostile" / name).read_bytes()
        if data[:2] == b"PK":  # same-length path swap in every member, so CRCs are rewritten
            out = io.BytesIO()
            with zipfile.ZipFile(io.BytesIO(data)) as zin, zipfile.ZipFile(out, "w") as zout:
                for info in zin.infolist():
                    zout.writestr(info.filename, zin.read(info).replace(b"/markers/", b"/control/"))
            data = out.getvalue()
        else:
            data = data.replace(b"/markers/", b"/control/")
        target = tmp_path / name
        target.write_bytes(data)
        jobs[kind != "pickle"] += [kind, str(target)]
    for job in jobs:  # pickles first, without torch; then the torch loaders in one process
        subprocess.run([PYTHON, "-c", _CONTROL, *job], capture_output=True, timeout=240, cwd=tmp_path)
    made = sorted(p.name for p in control.iterdir())
    assert made == sorted(n.rsplit(".", 1)[0] for n in cases)
    assert _markers(root) == []
