"""`poisonguard certify`, the training defences and the stage, end to end on small settings."""

import json

import pytest
import torch

from poisonguard.cli import main


@pytest.fixture(scope="module")
def small_data(mnist, tmp_path_factory):
    """800 MNIST images as an .npz (640 train / 160 test), to keep training in the tests short."""
    import numpy as np

    path = tmp_path_factory.mktemp("data") / "mnist800.npz"
    x = (mnist.train.x[:800] * 255).round().to(torch.uint8).numpy()
    np.savez(path, x=x, y=mnist.train.y[:800].numpy())
    return str(path)


@pytest.fixture(scope="module")
def ga_model(small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ga")
    assert main(["train", "--data", small_data, "--defense", "gaussian-augment", "--sigma", "0.25", "--epochs", "3",
                 "--out", str(out), "--quiet"]) == 0
    return out / "model.pt"


def test_certify_writes_report(ga_model, small_data, tmp_path):
    out = tmp_path / "cert"
    assert main(["certify", str(ga_model), "--data", small_data, "--sigma", "0.25", "--n", "200", "--n0", "20",
                 "--alpha", "0.01", "--max-examples", "8", "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    block = report["certification"]
    assert report["command"] == "certify"
    assert set(block["certified_accuracy"]) == {"0.0", "0.25", "0.5", "0.75", "1.0"}
    assert {"sigma", "n", "alpha", "abstain_rate", "seconds_per_example"} <= set(block)
    assert block["certified_accuracy"]["0.0"] > 0.3
    assert "certified accuracy vs radius" in (out / "report.html").read_text()


@pytest.mark.parametrize("args, message", [
    (["--sigma", "0"], "sigma"), (["--sigma", "-0.5"], "sigma"), (["--alpha", "0"], "alpha"),
    (["--alpha", "1.2"], "alpha"), (["--n0", "500", "--n", "100"], "must not exceed"),
    (["--n", "8", "--n0", "4"], "too small to ever certify"),
])
def test_bad_input_one_line_exit_2(ga_model, small_data, tmp_path, capsys, args, message):
    assert main(["certify", str(ga_model), "--data", small_data, *args, "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_partition_defense_and_poisoning_certificate(small_data, tmp_path, capsys):
    out = tmp_path / "dpa"
    assert main(["train", "--data", small_data, "--defense", "partition", "--partitions", "4", "--epochs", "1",
                 "--out", str(out), "--quiet"]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["format"] == "partition_ensemble" and meta["partitions"] == 4
    assert "poisoning_certification" in json.loads((out / "report.json").read_text())
    cert_out = tmp_path / "cert"
    assert main(["certify", str(out / "model.safetensors"), "--poisoning", "--data", small_data, "--budgets", "0,1,2,3",
                 "--out", str(cert_out), "--quiet"]) == 0
    block = json.loads((cert_out / "report.json").read_text())["poisoning_certification"]
    # 4 unanimous voters survive 2 poisoned samples (a 2-2 tie goes to the smaller class) but never 3.
    assert block["partitions"] == 4 and block["certified_accuracy"]["3"] == 0.0
    assert block["certified_accuracy"]["0"] == pytest.approx(block["clean_accuracy"])
    capsys.readouterr()
    # without --poisoning it is not one model: say which command reads it (it said "name its architecture")
    assert main(["certify", str(out / "model.safetensors"), "--data", small_data, "--out", str(tmp_path / "c2"),
                 "--quiet"]) == 2
    assert "--poisoning" in capsys.readouterr().err
    assert main(["train", "--data", small_data, "--partitions", "641", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "more than the 640 training samples" in capsys.readouterr().err


def test_an_ensembles_metadata_is_as_untrusted_as_a_models(small_data, tmp_path, capfd):
    """The ensemble's metadata.json sizes the base model before any tensor is compared: its
    class count, input shape and nesting are bounded as a model's are (2**31 classes asked for
    a terabyte; deep nesting was a RecursionError traceback)."""
    import shutil

    out = tmp_path / "dpa"
    assert main(["train", "--data", small_data, "--defense", "partition", "--partitions", "2", "--epochs", "1",
                 "--out", str(out), "--quiet"]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    for label, text in (("classes", json.dumps({**meta, "num_classes": 2**31})),
                        ("shape", json.dumps({**meta, "input_shape": [1, 200000, 200000]})),
                        ("deep", "[" * 100_000)):
        case = tmp_path / label
        shutil.copytree(out, case)
        (case / "metadata.json").write_text(text)
        capfd.readouterr()
        rc = main(["certify", str(case / "model.safetensors"), "--poisoning", "--data", small_data,
                   "--out", str(tmp_path / f"o_{label}"), "--quiet"])
        err = capfd.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and "metadata.json" in err[0], (label, err)


def test_stage_adds_certification(clean_model, mnist, tmp_path):
    from poisonguard.report import Report
    from poisonguard.stages import StageContext, run_stages

    from poisonguard.data import Splits

    report = Report("checklist")
    small = Splits("mnist5k", mnist.train, mnist.test.subset(torch.arange(12)))
    ctx = StageContext(command="demo", model=clean_model, splits=small, report=report, out_dir=tmp_path, quick=True,
                       device="cpu")
    assert run_stages(ctx, only=["certify"])
    assert report.data["stages"][0]["stage"] == "certify" and report.data["stages"][0]["status"] == "ok"
    assert report.data["certification"]["n"] == 500
    assert any("randomized smoothing" in s.title for s in report.sections)


def test_options_of_another_defence_are_refused_not_ignored(small_data, tmp_path, capsys):
    """--dp-epsilon beside --defense partition trained without DP, exit 0, no privacy block."""
    for named, stray in ((["--defense", "partition", "--partitions", "2"], ["--dp-epsilon", "4"]),
                         (["--defense", "gaussian-augment", "--sigma", "0.25"], ["--partitions", "3"])):
        capsys.readouterr()
        assert main(["train", "--data", small_data, *named, *stray, "--epochs", "1", "--out", str(tmp_path / "o"),
                     "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and stray[0] in err[0], err
