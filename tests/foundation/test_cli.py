"""The command line: real runs on MNIST 5k and one clear line + exit 2 for every user mistake."""

import json

import numpy as np
import pytest

from poisonguard.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    out = tmp_path_factory.mktemp("attack")
    assert main(["attack", "badnets", "--data", "mnist5k", "--target", "2", "--rate", "0.1", "--epochs", "6",
                 "--out", str(out), "--quiet"]) == 0
    return out


def test_attack_writes_everything(attacked):
    for name in ("model.pt", "trigger.npz", "metadata.json", "report.json", "report.html"):
        assert (attacked / name).is_file(), name
    meta = json.loads((attacked / "metadata.json").read_text())
    assert meta["architecture"] == "mnist_cnn" and meta["clean_accuracy"] >= 0.9 and meta["attack_success_rate"] >= 0.9
    report = json.loads((attacked / "report.json").read_text())
    assert report["tool"] == "poisonguard" and report["command"] == "attack"
    assert report["model"]["sha256"] == meta["sha256"] and report["model"]["input_shape"] == [1, 28, 28]
    with np.load(attacked / "trigger.npz", allow_pickle=False) as f:
        assert int(f["target"]) == 2 and f["mask"].shape == (28, 28)
    assert "<img" in (attacked / "report.html").read_text()


def test_evaluate_with_trigger(attacked, capsys):
    code, out, _ = run(capsys, "evaluate", str(attacked / "model.pt"), "--data", "mnist5k", "--trigger", str(attacked / "trigger.npz"))
    assert code == 0
    ev = json.loads(out)
    assert ev["clean_accuracy"] >= 0.9 and ev["attack_success_rate"] >= 0.9
    assert ev["attack_success_rate_trigger"] == "real"


def test_evaluate_names_a_reconstructed_trigger_as_such(attacked, tmp_path, capsys):
    """A trigger file scan wrote, given by --trigger, was reported as "real"; a hand-made one is "given"."""
    from dataclasses import replace

    from poisonguard.attacks import load_trigger, save_trigger

    planted = load_trigger(attacked / "trigger.npz")
    save_trigger(replace(planted, origin="reconstructed"), tmp_path / "trigger_0.npz")
    np.savez(tmp_path / "hand.npz", **{k: v for k, v in planted.to_arrays().items() if k != "origin"})
    for name, word in (("trigger_0.npz", "reconstructed"), ("hand.npz", "given")):
        out_dir = tmp_path / f"ev_{word}"
        code, out, _ = run(capsys, "evaluate", str(attacked / "model.pt"), "--data", "mnist5k", "--trigger",
                           str(tmp_path / name), "--out", str(out_dir))
        assert code == 0 and json.loads(out)["attack_success_rate_trigger"] == word
        html = (out_dir / "report.html").read_text()
        assert f"the {word} trigger makes" in html and "real trigger" not in html


def test_label_flip_attack_runs(tmp_path, capsys):
    code, out, _ = run(capsys, "attack", "label-flip", "--data", "mnist5k", "--target", "1", "--source", "7", "--rate", "0.05",
                       "--epochs", "1", "--out", str(tmp_path), "--quiet")
    assert code == 0 and json.loads(out)["attack_success_rate"] is None and not (tmp_path / "trigger.npz").exists()


def expect_user_error(capsys, *argv, match=""):
    code, _, err = run(capsys, *argv)
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert match.lower() in err.lower(), err
    return err


def test_bad_inputs_exit_2(attacked, tmp_path, capsys):
    model = str(attacked / "model.pt")
    expect_user_error(capsys, "evaluate", model, "--data", "no-such-data", match="unknown data set")
    expect_user_error(capsys, "evaluate", str(tmp_path / "missing.pt"), "--data", "mnist5k", match="not found")
    (tmp_path / "corrupt.pt").write_bytes(b"\x00garbage")
    expect_user_error(capsys, "evaluate", str(tmp_path / "corrupt.pt"), "--data", "mnist5k", "--arch", "mnist_cnn", match="cannot read")
    # a trigger for RGB 32x32 images on MNIST
    from poisonguard.attacks import badnets_trigger, save_trigger

    save_trigger(badnets_trigger((3, 32, 32), target=0), tmp_path / "rgb.npz")
    expect_user_error(capsys, "evaluate", model, "--data", "mnist5k", "--trigger", str(tmp_path / "rgb.npz"), match="trigger")
    # data whose image size does not fit the model, and data with a different class count
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "big.npz", x=rng.integers(0, 255, (40, 1, 32, 32), dtype=np.uint8), y=np.arange(40) % 10)
    expect_user_error(capsys, "evaluate", model, "--data", str(tmp_path / "big.npz"), match="inputs")
    np.savez(tmp_path / "five.npz", x=rng.integers(0, 255, (40, 1, 28, 28), dtype=np.uint8), y=np.arange(40) % 5)
    expect_user_error(capsys, "evaluate", model, "--data", str(tmp_path / "five.npz"), match="classes")
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 1, 28, 28), np.uint8), y=np.zeros(0, np.int64))
    expect_user_error(capsys, "evaluate", model, "--data", str(tmp_path / "empty.npz"), match="empty")
    expect_user_error(capsys, "attack", "badnets", "--data", "mnist5k", "--target", "12", "--out", str(tmp_path / "x"), match="target")
    # --rate 0 wrote a "backdoored" model with no poisoned sample; a text attack on images said "unknown attack"
    expect_user_error(capsys, "attack", "badnets", "--data", "mnist5k", "--rate", "0", "--out", str(tmp_path / "x"),
                      match="poisons no sample")
    expect_user_error(capsys, "attack", "rare-word", "--data", "mnist5k", "--out", str(tmp_path / "x"),
                      match="inserts words into text")
    # train builds built-ins only: a user's own code or a library name says so (it said "unknown architecture")
    for spec in ("mynet.py:build", "torchvision:resnet18"):
        expect_user_error(capsys, "train", "--data", "mnist5k", "--arch", spec, "--epochs", "1", "--out",
                          str(tmp_path / "t"), match="trains its built-in architectures only")


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["attack", "badnets", "--data", "mnist5k", "--rate", "1.5", "--out", "x"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["attack", "trojannn", "--data", "mnist5k", "--out", "x"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:  # -1 is all-to-all inside; a user meant the last class
        main(["attack", "badnets", "--data", "mnist5k", "--target", "-1", "--out", "x"])
    assert exc.value.code == 2


def test_outputs_never_overwrite_inputs(attacked, capsys):
    before = (attacked / "model.pt").read_bytes()
    expect_user_error(capsys, "evaluate", str(attacked / "model.pt"), "--data", "mnist5k", "--out", str(attacked), match="overwritten")
    assert (attacked / "model.pt").read_bytes() == before


def test_out_of_memory_is_one_line_exit_2_and_resizing_goes_in_chunks(monkeypatch, capsys):
    # A 30-byte metadata.json asking for 4096 x 4096 inputs made a batch of 512 allocate 34 GB,
    # and the failure printed an internal-error traceback.
    import torch

    import poisonguard.models.wrappers as wrappers
    from poisonguard.cli import build_parser

    inner = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 2))
    adapter = wrappers.InputAdapter(inner, size=(16, 16))
    x = torch.rand(10, 3, 8, 8)
    whole = adapter(x)
    monkeypatch.setattr(wrappers, "MAX_RESIZED_ELEMENTS", 3 * 16 * 16 * 3)  # three inputs at a time
    assert torch.allclose(adapter(x), whole, atol=1e-6)

    def out_of_memory(args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 17179869184 bytes")
    parser = build_parser()
    monkeypatch.setattr("poisonguard.cli.build_parser", lambda: parser)
    args = parser.parse_args(["inspect-file", "x"])
    monkeypatch.setattr(parser, "parse_args", lambda argv=None: args)
    monkeypatch.setattr(args, "func", out_of_memory)
    assert main(["inspect-file", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("poisonguard: error: out of memory") and "Traceback" not in err
