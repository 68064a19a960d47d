"""Pieces of the scanner on hand-made inputs: the opcode walk, names, expressions, operators."""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict

import pytest

from poisonguard.filesafety.archives import bad_name, check_archive
from poisonguard.filesafety.expressions import unsafe_expression
from poisonguard.filesafety.operators import is_allowed_operator, normalise_operator
from poisonguard.filesafety.pickles import walk_pickle


def test_plain_data_pickles_are_clean_and_globals_listed():
    data = pickle.dumps({"a": [1, 2.5, "x", b"y", None, True], "b": (1, 2), "c": OrderedDict(k=1)}, protocol=4)
    report = walk_pickle(data)
    assert report.findings == [] and report.globals == ["collections.OrderedDict"]


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_every_protocol_reports_the_same_import(protocol):
    import os

    class Evil:
        def __reduce__(self):
            return os.system, ("true",)

    report = walk_pickle(pickle.dumps(Evil(), protocol=protocol))
    assert any("system" in f for f in report.findings)


def test_truncated_and_garbage_pickles_are_findings_not_crashes():
    data = pickle.dumps(list(range(100)), protocol=2)
    assert walk_pickle(data[:-5]).findings
    assert walk_pickle(b"\x80\x02\xff\xff\xff").findings


def test_memo_read_before_write_is_a_finding():
    assert walk_pickle(b"\x80\x04h\x07.").findings


def test_codecs_encode_only_as_protocol_2_uses_it():
    good = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x06\x00\x00\x00latin1\x86R."
    bad = good.replace(b"latin1", b"rot_13")
    assert walk_pickle(good).findings == [] and walk_pickle(bad).findings


@pytest.mark.parametrize("name", ["../x", "a/../b", "/abs", "C:/x", "a//b", "a/./b", "a\\b", ""])
def test_bad_member_names(name):
    assert bad_name(name)


def test_good_member_names():
    assert bad_name("archive/data/0") is None and bad_name("archive/code/__torch__/m.py") is None


def test_archive_with_appended_junk_before_entries_is_refused():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a/data.pkl", pickle.dumps(1))
    data = b"junk" * 10 + buffer.getvalue()
    check = check_archive(io.BytesIO(data), len(data))
    assert any("before the first zip entry" in f for f in check.findings)


@pytest.mark.parametrize("expr", ["Symbol('s0', positive=True, integer=True)", "Add(Symbol('s1'), Integer(3))",
                                  "FloorDiv(s0, 2) + 1", "Max(2, s3)"])
def test_sympy_expressions_accepted(expr):
    assert unsafe_expression(expr) is None


@pytest.mark.parametrize("expr", ["__import__('os').system('x')", "s0.__class__", "(lambda: 1)()", "eval('1')",
                                  "Symbol('a; import os')", "[x for x in ()]", "Symbol('s', **{})"])
def test_code_in_expressions_refused(expr):
    assert unsafe_expression(expr) is not None


def test_guard_input_paths_accepted_only_in_guards():
    guard = "L['x'].size()[0] <= 64"
    assert unsafe_expression(guard, guard=True) is None and unsafe_expression(guard) is not None
    assert unsafe_expression("L['x'].__class__", guard=True) is not None


def test_operator_names():
    assert normalise_operator("torch.ops.aten.linear.default") == "aten::linear"
    assert normalise_operator("aten::add.out") == "aten::add"
    for allowed in ("aten::conv2d", "torch.ops.aten.relu_.default", "prim::If", "_operator.getitem"):
        assert is_allowed_operator(allowed)
    for refused in ("aten::from_file", "aten::save", "prim::Print", "torch.save", "attacker::op", "aten::manual_seed"):
        assert not is_allowed_operator(refused)


def test_torchscript_chains():
    from poisonguard.filesafety.torchscript import _check_chain

    assert _check_chain(["torch", "relu"]) is None and _check_chain(["ops", "prim", "RaiseException"]) is None
    assert "custom class" in _check_chain(["torch", "classes", "ns", "Thing"])
    assert _check_chain(["torch", "ops", "aten", "from_file"]) and _check_chain(["ops", "attacker", "run"])
    assert _check_chain(["self", "fc"]) is None


def test_onnx_external_data_inside_the_folder_is_accepted(tmp_path):
    import onnx
    import torch

    from poisonguard.filesafety import inspect_file

    torch.onnx.export(torch.nn.Linear(64, 64), (torch.randn(1, 64),), tmp_path / "m.onnx", dynamo=False)
    model = onnx.load(tmp_path / "m.onnx")
    onnx.save(model, tmp_path / "ext.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    assert (tmp_path / "weights.bin").exists()
    assert inspect_file(tmp_path / "ext.onnx").safe
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "ext.onnx").write_bytes((tmp_path / "ext.onnx").read_bytes())
    (tmp_path / "sub" / "weights.bin").symlink_to(tmp_path / "weights.bin")  # a link out of the folder
    assert not inspect_file(tmp_path / "sub" / "ext.onnx").safe


def test_a_safetensors_header_of_640_bytes_is_not_taken_for_a_pickle(tmp_path):
    """The header's length is the file's first 8 bytes: 640 is `80 02 ...`, a protocol-2 pickle's
    start, and `train --defense partition` wrote a model poisonguard then refused as unsafe."""
    import torch
    from safetensors.torch import save_file

    from poisonguard.filesafety import inspect_file
    from poisonguard.filesafety.formats import sniff_path

    for n in range(1, 700):  # find a tensor name that makes the header exactly 640 bytes
        save_file({"w" * n: torch.zeros(2), "b": torch.zeros(1)}, str(tmp_path / "m.safetensors"))
        if (tmp_path / "m.safetensors").read_bytes()[:2] == b"\x80\x02":
            break
    assert (tmp_path / "m.safetensors").read_bytes()[:2] == b"\x80\x02"
    assert sniff_path(tmp_path / "m.safetensors") == "safetensors"
    report = inspect_file(tmp_path / "m.safetensors")
    assert report.format == "safetensors" and report.safe, report
