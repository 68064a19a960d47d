"""`poisonguard filter`: STRIP as a run-time input filter, end to end with the session's backdoored model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from poisonguard import cli

from sanitize_helpers import uint8


@pytest.fixture(scope="module")
def filter_files(tmp_path_factory, mnist, badnets_model, badnets_trigger_3x3):
    """The backdoored model, a clean set (MNIST 5k's test part), and inputs: 60 clean, 40 triggered, mixed."""
    from poisonguard.models import save_model

    root = tmp_path_factory.mktemp("filter")
    model = root / "m" / "model.pt"
    save_model(badnets_model, model, arch="mnist_cnn", classes=mnist.classes, input_shape=mnist.input_shape)
    x = mnist.train.x[:100].clone()
    triggered = np.random.default_rng(3).permutation(100)[:40]
    x[triggered] = badnets_trigger_3x3.apply(x[triggered])
    inputs = root / "inputs.npz"
    np.savez(inputs, x=uint8(x), y=mnist.train.y.numpy()[:100])
    clean_inputs = root / "clean_inputs.npz"
    np.savez(clean_inputs, x=uint8(mnist.train.x[100:200]), y=mnist.train.y.numpy()[100:200])
    clean = root / "clean.npz"  # the clean set: its test part (300 images) sets the threshold
    np.savez(clean, x=uint8(mnist.train.x[200:260]), y=mnist.train.y.numpy()[200:260],
             x_test=uint8(mnist.test.x[:300]), y_test=mnist.test.y.numpy()[:300])
    return model, clean, inputs, clean_inputs, triggered


def _run(model, clean, inputs, out, *extra):
    return cli.main(["filter", str(model), "--data", str(clean), "--inputs", str(inputs), "--draws", "4",
                     "--out", str(out), "--quiet", "--device", "cpu", *extra])


def test_filter_rejects_triggered_inputs_and_keeps_clean_ones(tmp_path, filter_files, capsys):
    model, clean, inputs, _, triggered = filter_files
    out = tmp_path / "out"
    assert _run(model, clean, inputs, out, "--frr", "0.05") == 1
    block = json.loads((out / "report.json").read_text())["input_filter"]
    rejected = set(block["rejected"])
    # stdout counts under its own key: "rejected" is the list of positions in report.json
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["rejected_count"] == len(rejected) and "rejected" not in line
    assert len(rejected & set(triggered.tolist())) >= 0.8 * len(triggered)
    assert len(rejected - set(triggered.tolist())) <= 6  # of 60 clean at FRR 5%: about 3 expected
    assert block["verdict"] == "trojaned" and block["clean_inputs"] == 300
    accepted = np.load(out / "accepted.npz", allow_pickle=False)
    assert len(accepted["y"]) == 100 - len(rejected)
    entropy = np.load(out / "entropy.npz", allow_pickle=False)
    assert np.array_equal(np.flatnonzero(entropy["rejected"]), sorted(rejected))
    assert (out / "report.html").is_file()


def test_filter_reads_images_that_come_without_labels(tmp_path, filter_files):
    """Inputs at run time have no labels yet: an .npz holding only x is filtered as the labelled one."""
    model, clean, inputs, _, _ = filter_files
    unlabelled = tmp_path / "unlabelled.npz"
    np.savez(unlabelled, x=np.load(inputs)["x"])
    assert _run(model, clean, inputs, tmp_path / "a", "--frr", "0.05") == 1
    assert _run(model, clean, unlabelled, tmp_path / "b", "--frr", "0.05") == 1
    labelled, bare = (json.loads((tmp_path / d / "report.json").read_text())["input_filter"] for d in "ab")
    assert bare["rejected"] == labelled["rejected"]
    accepted = np.load(tmp_path / "b" / "accepted.npz", allow_pickle=False)
    assert set(accepted.files) == {"x"} and len(accepted["x"]) == 100 - len(bare["rejected"])
    # the same images as PNG files in one folder, no class sub-folders: read in name order
    from PIL import Image

    folder = tmp_path / "incoming"
    folder.mkdir()
    for i, image in enumerate(np.load(inputs)["x"]):
        Image.fromarray(image[0]).save(folder / f"{i:03d}.png")
    assert _run(model, clean, folder, tmp_path / "c", "--frr", "0.05") == 1
    block = json.loads((tmp_path / "c" / "report.json").read_text())["input_filter"]
    assert block["rejected"] == labelled["rejected"]
    assert block["rejected_files"] == [f"{i:03d}.png" for i in labelled["rejected"]]


def test_filter_on_clean_inputs_exits_0(tmp_path, filter_files):
    model, clean, _, clean_inputs, _ = filter_files
    assert _run(model, clean, clean_inputs, tmp_path / "out") == 0
    block = json.loads((tmp_path / "out" / "report.json").read_text())["input_filter"]
    assert block["verdict"] == "clean" and len(block["rejected"]) <= 5


def test_filter_bad_frr_is_one_line_exit_2(tmp_path, filter_files, capsys):
    model, clean, inputs, _, _ = filter_files
    assert _run(model, clean, inputs, tmp_path / "out", "--frr", "0.9") == 2
    err = capsys.readouterr().err.strip()
    assert "--frr" in err and len(err.splitlines()) == 1
