"""`poisonguard scan` end to end: report files, trigger files, and one-line errors for bad input."""

import json

import numpy as np
import pytest
import torch

from poisonguard import cli
from poisonguard.models import save_model


@pytest.fixture(scope="module")
def saved_badnets(badnets_model, mnist, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model(badnets_model, path, arch="mnist_cnn", classes=mnist.classes, input_shape=mnist.input_shape)
    return path


@pytest.fixture(scope="module")
def scan_out(saved_badnets, tmp_path_factory):
    out = tmp_path_factory.mktemp("scan")
    # Neural Cleanse alone, uncalibrated, so the test stays short; the verdict's own statistic.
    code = cli.main(["scan", str(saved_badnets), "--data", "mnist5k", "--method", "neural-cleanse", "--calibration",
                     "none", "--epochs", "20", "--out", str(out), "--quiet", "--device", "cpu"])
    assert code == 1  # a backdoor found: the CI-gating exit code
    return out


def test_scan_writes_report_and_trigger(scan_out):
    report = json.loads((scan_out / "report.json").read_text())
    assert report["command"] == "scan"
    verdict = report["verdict"]
    assert verdict["backdoored"] and verdict["targets"] == [0] and verdict["false_positive_rate"] == 0.05
    assert 0.95 < verdict["score"] <= 1 and "UNCALIBRATED" in verdict["sentence"]
    det = report["detections"][0]
    assert det["method"] == "neural_cleanse" and len(det["anomaly_index"]) == 10 and det["seconds"] > 0
    with np.load(scan_out / "trigger_0.npz", allow_pickle=False) as f:
        assert f["mask"].shape == (28, 28) and f["pattern"].shape == (1, 28, 28) and int(f["target"]) == 0
    html = (scan_out / "report.html").read_text()
    assert "BACKDOORED" in html and "data:image/png;base64" in html


def test_report_sentence_and_charts_agree_with_the_json(scan_out):
    import html as html_lib

    report = json.loads((scan_out / "report.json").read_text())
    verdict = report["verdict"]
    page = html_lib.unescape((scan_out / "report.html").read_text())
    # The verdict's sentence opens the page, before any method's section.
    assert verdict["sentence"] in page
    assert page.index(verdict["sentence"]) < page.index("Trigger reconstruction")
    # The method's table (drawn from the same numbers as its bar chart) shows the verdict's statistic.
    section = page[page.index("Trigger reconstruction"):]
    for e in verdict["evidence"]:
        assert f"<td>{e['statistic']:.3f}</td>" in section
    flagged = [e for e in verdict["evidence"] if e["flagged"]]
    assert [e["class"] for e in flagged] == verdict["targets"]
    assert section.count(">flagged<") == len(flagged)
    assert f"above the threshold {flagged[0]['threshold']:.2f}" in section


def test_clean_model_exits_0(clean_model, mnist, tmp_path):
    path = tmp_path / "clean" / "model.pt"
    save_model(clean_model, path, arch="mnist_cnn", classes=mnist.classes, input_shape=mnist.input_shape)
    code = cli.main(["scan", str(path), "--data", "mnist5k", "--method", "neural-cleanse", "--calibration", "none",
                     "--epochs", "20", "--out", str(tmp_path / "o"), "--quiet", "--device", "cpu"])
    assert code == 0
    verdict = json.loads((tmp_path / "o" / "report.json").read_text())["verdict"]
    assert not verdict["backdoored"] and verdict["sentence"].startswith("No backdoor found")


def test_reconstructed_trigger_works_as_a_trigger(scan_out, badnets_model, mnist):
    from poisonguard.attacks import load_trigger
    from poisonguard.train import evaluate

    ev = evaluate(badnets_model, mnist.test, load_trigger(scan_out / "trigger_0.npz"))
    assert ev.attack_success_rate > 0.9


def test_data_free_scan(saved_badnets, tmp_path, capsys):
    # No --method: the default set minus what needs data; --exit-zero keeps exit 0 whatever it finds.
    code = cli.main(["scan", str(saved_badnets), "--data", "none", "--exit-zero",
                     "--out", str(tmp_path), "--quiet", "--device", "cpu"])
    assert code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    report = json.loads((tmp_path / "report.json").read_text())
    assert out["verdict"] == report["verdict"]
    assert [d["method"] for d in report["detections"]] == ["deepinspect"]
    assert report["verdict"]["data"]["clean_images"] == 0 and "data-free" in report["verdict"]["sentence"]
    assert "UNCALIBRATED" in report["verdict"]["sentence"]
    top = max(report["verdict"]["evidence"], key=lambda e: e["statistic"])
    assert top["class"] == 0


@pytest.mark.parametrize("argv, message", [
    (["--data", "none", "--method", "neural-cleanse"], "needs clean data"),
    (["--data", "mnist5k", "--method", "strip"], "unknown detection method"),
    (["--data", "mnist5k", "--method", ""], "empty"),
])
def test_bad_input_is_one_line_exit_2(saved_badnets, tmp_path, capsys, argv, message):
    code = cli.main(["scan", str(saved_badnets), *argv, "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1


def test_shape_mismatch_and_non_classifier(tmp_path, mnist, capsys):
    # A CIFAR-shaped model against MNIST data.
    from poisonguard.models import build_model

    wrong = build_model("mnist_cnn", num_classes=10, input_shape=(3, 32, 32))
    path = tmp_path / "m" / "model.pt"
    save_model(wrong, path, arch="mnist_cnn", classes=[str(i) for i in range(10)], input_shape=(3, 32, 32))
    assert cli.main(["scan", str(path), "--data", "mnist5k", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "inputs" in capsys.readouterr().err
    # A TorchScript module that returns images, not class scores.
    scripted = torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3, padding=1)))
    ts = tmp_path / "ts.pt"
    scripted.save(str(ts))
    assert cli.main(["scan", str(ts), "--data", "mnist5k", "--out", str(tmp_path / "o2"), "--quiet"]) == 2
    assert "not a classifier" in capsys.readouterr().err


def test_report_renders_in_headless_chromium(scan_out, page_colours):
    assert page_colours(scan_out / "report.html") > 50  # the page drew images, not a blank screen
