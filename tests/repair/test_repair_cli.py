"""`poisonguard repair` end to end: outputs, the input file untouched, bad inputs -> exit 2."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from torch import nn

from poisonguard.cli import main


@pytest.fixture(scope="module")
def saved(tmp_path_factory, mnist, badnets_model, badnets_trigger_3x3):
    from poisonguard.attacks import save_trigger
    from poisonguard.models import save_model

    folder = tmp_path_factory.mktemp("suspect")
    save_model(badnets_model, folder / "model.pt", arch="mnist_cnn", classes=mnist.classes, input_shape=mnist.input_shape)
    save_trigger(badnets_trigger_3x3, folder / "trigger.npz")
    return folder


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_repair_writes_model_and_reports_and_leaves_input_alone(saved, tmp_path, capsys):
    before = digest(saved / "model.pt")
    out = tmp_path / "out"
    rc = main(["repair", str(saved / "model.pt"), "--data", "mnist5k", "--method", "fine-pruning", "--epochs", "4",
               "--trigger", str(saved / "trigger.npz"), "--out", str(out), "--quiet"])
    assert rc == 0
    assert digest(saved / "model.pt") == before
    report = json.loads((out / "report.json").read_text())
    entry = report["repairs"][0]
    assert report["command"] == "repair" and entry["method"] == "fine_pruning"
    assert entry["before"]["attack_success_rate"] > 0.9 > entry["after"]["attack_success_rate"]
    # the pruning curve says what it counts and where it measured (its clean data, not the test set)
    assert "channels in layer" in (out / "report.html").read_text() and "the table above, on the test set" in \
        (out / "report.html").read_text()
    assert {"clean_accuracy", "attack_success_rate"} <= set(entry["after"]) and entry["seconds"] > 0
    assert entry["extra"]["curve"]
    html = (out / "report.html").read_text()
    assert "accuracy vs pruning" in html or "pruning curve" in html
    from poisonguard.models import load_model

    repaired = load_model(out / "model.safetensors").model  # a state dict in: safetensors out (issue 15)
    assert repaired(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["after"]["attack_success_rate"] == entry["after"]["attack_success_rate"]


def test_repair_from_scan_folder_uses_its_triggers(saved, tmp_path, capsys):
    from poisonguard.attacks import badnets_trigger, save_trigger

    scan = tmp_path / "scan"
    save_trigger(badnets_trigger((1, 28, 28), target=0, size=3), scan / "trigger_0.npz")
    out = tmp_path / "out"
    rc = main(["repair", str(saved / "model.pt"), "--data", "mnist5k", "--method", "unlearn", "--epochs", "3",
               "--from-scan", str(scan), "--out", str(out), "--quiet"])
    assert rc == 0
    entry = json.loads((out / "report.json").read_text())["repairs"][0]
    # The triggers came from a scan, and without --trigger the attack is measured with the scan's
    # reconstruction: the JSON, the stdout line and the HTML all say so.
    assert entry["extra"]["trigger_source"] == "scan"
    assert entry["extra"]["attack_success_rate_trigger"] == "reconstructed"
    assert entry["extra"]["trigger_reconstructed_by"] == "scan"
    assert entry["after"]["attack_success_rate"] < entry["before"]["attack_success_rate"]
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["attack_success_rate_trigger"] == "reconstructed" and printed["trigger_reconstructed_by"] == "scan"
    html = (out / "report.html").read_text()
    assert "a trigger reconstructed by scan fools the model" in html


@pytest.mark.parametrize("extra,message", [
    (["--clean-fraction", "0"], "clean-fraction"),
    (["--clean-fraction", "1.5"], "clean-fraction"),
    (["--method", "magic"], "unknown repair method"),
    (["--epochs", "-1"], "epochs"),  # the constructor's ValueError, shown as one line
    (["--lr", "0"], "lr"),
])
def test_bad_options_exit_2(saved, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    rc = main(["repair", str(saved / "model.pt"), "--data", "mnist5k", *extra, "--out", str(out), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not list(out.glob("model.*"))


def test_trigger_that_does_not_fit_exits_2(saved, tmp_path, capsys):
    from poisonguard.attacks import badnets_trigger, save_trigger

    save_trigger(badnets_trigger((3, 32, 32), target=0), tmp_path / "rgb.npz")
    rc = main(["repair", str(saved / "model.pt"), "--data", "mnist5k", "--trigger", str(tmp_path / "rgb.npz"),
               "--out", str(tmp_path / "out"), "--quiet"])
    assert rc == 2 and "trigger" in capsys.readouterr().err


def test_output_folder_holding_the_input_is_refused(saved, capsys):
    before = digest(saved / "model.pt")
    rc = main(["repair", str(saved / "model.pt"), "--data", "mnist5k", "--out", str(saved), "--quiet"])
    assert rc == 2 and "overwritten" in capsys.readouterr().err
    assert digest(saved / "model.pt") == before


def test_fine_pruning_a_model_without_conv_exits_2(mnist, tmp_path, capsys):
    from poisonguard.models import ARCHITECTURES, save_model

    if "test_repair_mlp" not in ARCHITECTURES:
        @ARCHITECTURES.register("test_repair_mlp")
        def _mlp(*, num_classes, input_shape):
            c, h, w = input_shape
            return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 16), nn.ReLU(), nn.Linear(16, num_classes))

    model = ARCHITECTURES.get("test_repair_mlp")(num_classes=10, input_shape=(1, 28, 28))
    save_model(model, tmp_path / "mlp" / "model.pt", arch="test_repair_mlp", classes=mnist.classes, input_shape=(1, 28, 28))
    rc = main(["repair", str(tmp_path / "mlp" / "model.pt"), "--data", "mnist5k", "--method", "fine-pruning",
               "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "no convolutional layer" in err and "1 (Linear" in err and "--prune-layer" in err


class _DataDependent(nn.Module):
    """Control flow that torch's TorchScript converter cannot turn into an eager module."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        if bool(x.mean() > 0.5):
            out = out * 2
        for _ in range(x.shape[0] % 3):
            out = out + 0.0
        return out


def test_an_unconvertible_torchscript_model_names_the_methods_that_work_once(badnets_model, tmp_path, capsys, caplog):
    # The warning said "refit, wild and unlearn can", twice in other words; wild then refused it.
    import logging

    torch.jit.save(torch.jit.script(_DataDependent(badnets_model).eval()), str(tmp_path / "cf.pt"))
    with caplog.at_level(logging.WARNING):
        rc = main(["repair", str(tmp_path / "cf.pt"), "--data", "mnist5k", "--method", "wild", "--out",
                   str(tmp_path / "out")])
    warnings = [r.getMessage() for r in caplog.records if "TorchScript model" in r.getMessage()]
    assert len(warnings) == 1 and "wild" in warnings[0].split("cannot work")[0], warnings
    assert rc == 2
    err = capsys.readouterr().err
    assert "--method refit and --method unlearn (its default mode) work on it" in err
