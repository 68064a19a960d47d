"""`poisonguard sanitize` end to end: positions in the input's order, the cleansed copy, the report,
exit codes, and one-line errors for bad input (the input file never modified)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from poisonguard import cli

from sanitize_helpers import planted, uint8


@pytest.fixture(scope="module")
def shuffled(mnist, tmp_path_factory):
    """A poisoned .npz whose rows are shuffled, with the poisoned rows' positions after the shuffle."""
    data, truth, trigger = planted(mnist, rate=0.05, seed=31)
    perm = np.random.default_rng(7).permutation(len(truth))
    path = tmp_path_factory.mktemp("data") / "poisoned.npz"
    np.savez(path, x=uint8(data.x)[perm], y=data.y.numpy()[perm], x_test=uint8(mnist.test.x), y_test=mnist.test.y.numpy())
    from poisonguard.attacks import save_trigger

    save_trigger(trigger, path.parent / "trigger.npz")
    return path, truth[perm]


@pytest.fixture(scope="module")
def run(shuffled, tmp_path_factory):
    path, _ = shuffled
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    out = tmp_path_factory.mktemp("sanitize")
    code = cli.main(["sanitize", str(path), "--epochs", "4", "--retrain", "--retrain-epochs", "3",
                     "--trigger", str(path.parent / "trigger.npz"), "--out", str(out), "--quiet", "--device", "cpu"])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    return code, out


def test_positions_are_the_inputs_own_rows(run, shuffled):
    code, out = run
    _, truth = shuffled
    block = json.loads((out / "report.json").read_text())["sanitization"]
    assert code == 1 and block["verdict"] == "poisoned" and block["targets"] == [0]
    flagged = np.zeros(len(truth), bool)
    flagged[block["flagged"]] = True
    assert (flagged & truth).sum() >= 0.8 * truth.sum() and (flagged & ~truth).sum() <= 0.03 * (~truth).sum()
    from poisonguard.sanitize import DEFAULT_METHODS

    assert set(block["methods"]) == set(DEFAULT_METHODS) and set(block["scores"]) == set(DEFAULT_METHODS)


def test_cleansed_npz_holds_exactly_the_kept_rows(run, shuffled):
    _, out = run
    path, truth = shuffled
    flagged = json.loads((out / "report.json").read_text())["sanitization"]["flagged"]
    keep = np.setdiff1d(np.arange(len(truth)), flagged)
    with np.load(path) as src, np.load(out / "cleansed.npz", allow_pickle=False) as got:
        assert np.array_equal(got["x"], src["x"][keep]) and np.array_equal(got["y"], src["y"][keep])
        assert np.array_equal(got["x_test"], src["x_test"]) and np.array_equal(got["y_test"], src["y_test"])
    with np.load(out / "scores.npz", allow_pickle=False) as s:
        assert s["combined"].shape == (len(truth),) and s["score_scan"].shape == (len(truth),)
        assert np.array_equal(np.flatnonzero(s["flagged"]), np.asarray(flagged))


def test_report_and_retrain(run):
    _, out = run
    report = json.loads((out / "report.json").read_text())
    assert report["command"] == "sanitize"
    retrain = report["retrain"]
    assert retrain["attack_success_rate"] < 0.2 and retrain["clean_accuracy"] > 0.8
    html = (out / "report.html").read_text()
    assert "POISONED" in html and html.count("data:image/png;base64") >= 3


def _npz(tmp_path, name, **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def _bad_inputs(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (60, 1, 8, 8), dtype=np.uint8)
    y = np.repeat(np.arange(3), 20)
    nan = rng.random((60, 1, 8, 8)).astype(np.float32)
    nan[3, 0, 2, 2] = np.nan
    return [
        (_npz(tmp_path, "one.npz", x=x, y=np.zeros(60, np.int64)), [], "at least 2 classes"),
        (_npz(tmp_path, "few.npz", x=x[:12], y=np.arange(12) % 3), [], "fewer than"),
        (_npz(tmp_path, "range.npz", x=x, y=y, classes=np.array(["a", "b"])), [], "label 2 has no class name"),
        (_npz(tmp_path, "neg.npz", x=x, y=y - 1), [], "from 0"),
        (_npz(tmp_path, "nan.npz", x=nan, y=y), [], "finite"),
        (_npz(tmp_path, "ok.npz", x=x, y=y), ["--expected-rate", "0.7"], "--expected-rate"),
        (_npz(tmp_path, "ok2.npz", x=x, y=y), ["--method", "activation-clustering"], "unknown sanitization method"),
    ]


def test_bad_input_is_one_line_exit_2(tmp_path, capsys):
    for path, extra, message in _bad_inputs(tmp_path):
        before = path.read_bytes()
        code = cli.main(["sanitize", str(path), *extra, "--out", str(tmp_path / "o"), "--quiet"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and len(err.splitlines()) == 1, (path.name, err)
        assert path.read_bytes() == before


def test_model_with_other_classes_is_exit_2(tmp_path, mnist, capsys):
    from poisonguard.models import build_model, save_model

    path = tmp_path / "m" / "model.pt"
    save_model(build_model("mnist_cnn", num_classes=5, input_shape=(1, 28, 28), seed=0), path, arch="mnist_cnn",
               classes=[str(i) for i in range(5)], input_shape=(1, 28, 28))
    data = _npz(tmp_path, "d.npz", x=uint8(mnist.train.x[:300]), y=mnist.train.y.numpy()[:300])
    assert cli.main(["sanitize", str(data), "--model", str(path), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "5 classes" in err and "10" in err and len(err.splitlines()) == 1


def test_report_renders_in_headless_chromium(run, page_colours):
    _, out = run
    assert page_colours(out / "report.html") > 50  # the page drew images, not a blank screen


def test_flat_image_folder_scores_every_row_and_names_files(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    root = tmp_path / "imgs"
    for c in ("a", "b", "c"):
        (root / c).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(root / c / f"{i:02d}.png")
    out = tmp_path / "out"
    code = cli.main(["sanitize", str(root), "--epochs", "1", "--exit-zero", "--out", str(out), "--quiet", "--device", "cpu"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["samples"] == 36 and report["data"]["test_part"] == 0
    with np.load(out / "scores.npz", allow_pickle=False) as s, np.load(out / "cleansed.npz", allow_pickle=False) as c:
        assert s["combined"].shape == (36,)
        kept = 36 - len(report["sanitization"]["flagged"])
        assert c["x"].shape == (kept, 1, 8, 8) and len(c["names"]) == kept and str(c["names"][0]).startswith("a/")


def test_npz_without_test_part_keeps_every_row_in_file_order(tmp_path):
    from poisonguard.data.rows import load_rows

    rng = np.random.default_rng(2)
    x = rng.integers(0, 255, (50, 1, 6, 6), dtype=np.uint8)
    y = rng.permutation(np.arange(50) % 5)
    rows = load_rows(str(_npz(tmp_path, "only_x.npz", x=x, y=y)))
    assert rows.test is None and rows.kind == "npz"
    assert np.array_equal(rows.train.y.numpy(), y)
    assert np.array_equal(np.rint(rows.train.x.numpy() * 255).astype(np.uint8), x)


def test_given_model_is_used_and_finds_its_own_poison(tmp_path, mnist, badnets_model, badnets_trigger_3x3):
    """--model: the session's backdoored model with the data it was trained on; nothing is trained."""
    from poisonguard.attacks import poison_dataset
    from poisonguard.models import save_model

    p = poison_dataset(mnist.train, badnets_trigger_3x3, rate=0.1, seed=0)  # as tests/conftest.py trains it
    data = _npz(tmp_path, "p.npz", x=uint8(p.data.x), y=p.data.y.numpy(), x_test=uint8(mnist.test.x), y_test=mnist.test.y.numpy())
    model = tmp_path / "m" / "model.pt"
    save_model(badnets_model, model, arch="mnist_cnn", classes=mnist.classes, input_shape=mnist.input_shape)
    out = tmp_path / "out"
    assert cli.main(["sanitize", str(data), "--model", str(model), "--out", str(out), "--quiet", "--device", "cpu"]) == 1
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["sha256"] and report["sanitization"]["extra"]["trained_model"] is False
    flagged = set(report["sanitization"]["flagged"])
    assert len(flagged & set(p.poisoned_index.tolist())) >= 0.9 * len(p.poisoned_index)
    # the options every model command takes: a model fed through its own preprocessing
    assert cli.main(["sanitize", str(data), "--model", str(model), "--normalize", "0,1", "--out", str(tmp_path / "n"),
                     "--quiet", "--device", "cpu"]) == 1
    assert json.loads((tmp_path / "n" / "report.json").read_text())["model"]["normalize"] == {"mean": [0.0], "std": [1.0]}
