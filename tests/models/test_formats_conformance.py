"""The format conformance suite (pairwise subset): every format meets every command, and every
architecture meets every format and every command (tests/models/conformance.py holds the lists;
benchmarks/formats_matrix.py runs the full product)."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import conformance as C  # noqa: E402


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    return root, C.make_data(root / "d.npz"), {}


@pytest.mark.parametrize("arch, fmt, command", C.pairwise(), ids=lambda v: str(v))
def test_every_format_through_every_command(matrix, arch, fmt, command):
    root, data, models = matrix
    logging.disable(logging.WARNING)  # "near chance" and conversion notes are expected on these tiny models
    try:
        C.Case(arch, fmt, command, root, data, models).run()
    finally:
        logging.disable(logging.NOTSET)


def test_pairwise_covers_every_pair():
    cases = C.pairwise()
    for i, j in ((0, 1), (0, 2), (1, 2)):
        seen = {(c[i], c[j]) for c in cases}
        sizes = [len(C.ARCHS), len(C.FORMATS), len(C.COMMANDS)]
        assert len(seen) == sizes[i] * sizes[j]


def test_handle_copies_and_freezes_every_kind():
    """ScriptModule deep copies have non-leaf parameters; exported modules refuse eval(): the handle copes."""
    from poisonguard.detect.engine import frozen_copy
    from poisonguard.models.handle import copy_module, module_kind, supports_hooks

    model = C.foreign_archs.residual(num_classes=4).eval()
    x = torch.rand(3, 1, 8, 8)
    kinds = {"eager": model, "torchscript": torch.jit.trace(model, x[:2]),
             "export": torch.export.export(model, (x[:2],)).module()}
    for kind, m in kinds.items():
        assert module_kind(m) == kind
        frozen = frozen_copy(m, torch.device("cpu"))
        assert not any(p.requires_grad for p in frozen.parameters())
        assert all(p.requires_grad for p in m.parameters())  # the caller's model is untouched
        assert torch.allclose(frozen(x), model(x), atol=1e-5)
        copy = copy_module(m)
        assert all(p.is_leaf for p in copy.parameters())
    assert supports_hooks(model) and not supports_hooks(kinds["torchscript"])


def test_readme_bring_your_own_model_example_runs():
    text = (HERE.parents[1] / "README.md").read_text(encoding="utf-8")
    section = text.split("## Bring your own model", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    logging.disable(logging.WARNING)
    try:
        exec(compile(code, "README.md", "exec"), {})
    finally:
        logging.disable(logging.NOTSET)


def test_torchscript_torch_cannot_convert_still_works_or_says_why(matrix, tmp_path, monkeypatch, capfd):
    """When torch's TorchScript converter fails, the ScriptModule itself is used: scan (the engine's
    memory probe skips hooks) and refit work, fine-pruning says in one line what to use instead."""
    import warnings

    from poisonguard.cli import main
    from poisonguard.models.formats import torchscript

    root, data, _ = matrix
    model = C.train("residual", data, epochs=3)
    path = tmp_path / "in" / "model.pt"
    path.parent.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(model), str(path))

    def refuse(*_a, **_k):
        raise RuntimeError("unsupported TorchScript construct")

    monkeypatch.setattr(torchscript, "from_torchscript", refuse)
    logging.disable(logging.WARNING)
    try:
        assert main(["scan", str(path), "--data", str(data), "--epochs", "1", "--out", str(tmp_path / "s"), "--quiet"]) in (0, 1)
        assert main(["repair", str(path), "--data", str(data), "--method", "refit", "--epochs", "1",
                     "--out", str(tmp_path / "r"), "--quiet"]) == 0
        assert (tmp_path / "r" / "model.pt").is_file()
        capfd.readouterr()
        rc = main(["repair", str(path), "--data", str(data), "--method", "fine-pruning", "--out", str(tmp_path / "f"), "--quiet"])
    finally:
        logging.disable(logging.NOTSET)
    err = capfd.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--method refit" in err[0], err
    assert not list((tmp_path / "f").glob("model.*")) and not (tmp_path / "f" / "report.json").exists()


def test_layer_methods_on_graph_formats_through_the_api(matrix):
    """Unlearning's pruning mode hooks the penultimate layer: it works on an ExportedProgram and a
    TorchScript module passed straight to the Python API, and never changes them."""
    import numpy as np

    import poisonguard
    from poisonguard.attacks import badnets_trigger

    root, data, models = matrix
    model = models.setdefault("bn_dropout", C.train("bn_dropout", data))
    with np.load(data) as f:
        x, y = torch.from_numpy(f["x"]), torch.from_numpy(f["y"])
    trigger = badnets_trigger((1, 8, 8), target=0, size=2)
    for given in (torch.export.export(model, (x[:2],)), torch.jit.trace(model, x[:2])):
        before = [p.detach().clone() for p in model.parameters()]
        fix = poisonguard.repair(given, x, y, method="unlearn", mode="prune", triggers=[trigger], epochs=1)
        assert fix.extra.get("mode", "prune") == "prune" and fix.model is not given
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_arch_from_an_importable_module_and_code_needs_opt_in():
    from poisonguard.errors import UserError
    from poisonguard.models.arch import build_from_spec

    net = build_from_spec("foreign_archs:mixer", num_classes=4, input_shape=(1, 8, 8), kwargs={"num_classes": 4}, trusted=True)
    assert net(torch.rand(2, 1, 8, 8)).shape == (2, 4)
    with pytest.raises(UserError, match="typed on the command line"):
        build_from_spec("foreign_archs:mixer", num_classes=4, input_shape=(1, 8, 8), trusted=False)
    with pytest.raises(UserError, match="does not take the arguments"):
        build_from_spec("foreign_archs:mixer", num_classes=4, input_shape=(1, 8, 8), kwargs={"depth": 3}, trusted=True)


@pytest.mark.parametrize("fmt, method", [("torchscript_traced", "fine-pruning"), ("pt2", "refit"), ("onnx", "wild")])
def test_backdoor_removed_from_a_graph_format_measured_on_the_file_written_back(badnets_model, badnets_trigger_3x3,
                                                                               tmp_path, fmt, method, capsys):
    """The BadNets MNIST model, exported, repaired through the CLI; `evaluate` on the re-loaded file
    shows the attack gone (the benchmark's goal is ASR <= 5% losing <= 3 points; asserted with margin)."""
    import json
    import warnings

    from poisonguard.attacks import save_trigger
    from poisonguard.cli import main

    example = torch.rand(2, 1, 28, 28)
    path = tmp_path / "in" / f"model.{C.EXT[fmt]}"
    path.parent.mkdir()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if fmt == "torchscript_traced":
            torch.jit.save(torch.jit.trace(badnets_model.eval(), example), str(path))
        elif fmt == "pt2":
            torch.export.save(torch.export.export(badnets_model.eval(), (example,)), str(path))
        else:
            torch.onnx.export(badnets_model.eval(), (example,), str(path), dynamo=False, opset_version=16,
                              input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    trigger = tmp_path / "trigger.npz"
    save_trigger(badnets_trigger_3x3, trigger)
    out = tmp_path / "fixed"
    assert main(["repair", str(path), "--data", "mnist5k", "--method", method, "--epochs", "8", "--trigger", str(trigger),
                 "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    scores = []
    for model in (path, out / path.name):
        assert main(["evaluate", str(model), "--data", "mnist5k", "--trigger", str(trigger), "--quiet"]) == 0
        scores.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    before, after = scores
    assert before["attack_success_rate"] > 0.9
    assert after["attack_success_rate"] < 0.2
    assert after["clean_accuracy"] > before["clean_accuracy"] - 0.08
