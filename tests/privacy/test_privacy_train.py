"""DP training end to end: seeds, model fixes, memory batching, the CLI and the stage."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from poisonguard.errors import UserError
from poisonguard.privacy import DPSGD, TRAINERS, GradientShaping, make_dp_compatible
from privacy_helpers import bn_net, stateful_net, tiny_net


@pytest.fixture(scope="module")
def small(mnist):
    return mnist.train.subset(np.arange(256))


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_registry_holds_both_trainers():
    assert TRAINERS.names() == ["dp_sgd", "gradient_shaping"]
    assert TRAINERS.get("dp-sgd") is DPSGD and TRAINERS.get("gradient_shaping") is GradientShaping


def test_batchnorm_is_replaced_and_reported(small):
    fixed, fixes = make_dp_compatible(bn_net())
    assert fixes == [{"layer": "1", "from": "BatchNorm2d", "to": "GroupNorm"}]
    trained, privacy = DPSGD(epsilon=8, delta=1e-4, epochs=1, batch_size=64, accountant="rdp",
                             device="cpu").fit(bn_net(), small)
    assert privacy.extra["fixes"] == fixes
    assert isinstance(trained[1], torch.nn.GroupNorm)


def test_a_layer_nobody_can_fix_is_named(small):
    with pytest.raises(UserError, match=r"layer '0' \(ScaleWithStats\)"):
        DPSGD(epsilon=8, delta=1e-4, epochs=1, batch_size=64, device="cpu").fit(stateful_net(), small)
    with pytest.raises(UserError, match="plain PyTorch module"):
        make_dp_compatible(torch.jit.script(tiny_net()))


def test_batch_larger_than_data_is_refused(small):
    with pytest.raises(UserError, match="larger than the 256"):
        DPSGD(epsilon=8, delta=1e-4, batch_size=257, device="cpu").fit(tiny_net(), small)


def test_physical_batches_stay_small_while_accounting_counts_logical_steps(small):
    sizes = []

    def watch(private, dp_opt):
        private.register_forward_pre_hook(lambda m, inp: sizes.append(len(inp[0])))

    _, privacy = DPSGD(epsilon=8, delta=1e-4, epochs=1, batch_size=128, max_physical_batch_size=32, accountant="rdp",
                       grad_sample_mode="hooks", device="cpu").fit(tiny_net(), small, on_private=watch)
    assert privacy.extra["steps"] == 2 and max(sizes) <= 32 and len(sizes) >= 6


def test_gradient_shaping_claims_no_epsilon(small):
    _, privacy = GradientShaping(noise_multiplier=0.3, epochs=1, batch_size=64, device="cpu").fit(tiny_net(), small)
    assert math.isinf(privacy.epsilon) and privacy.accountant == "none" and privacy.noise_multiplier == 0.3
    assert privacy.to_dict()["epsilon"] == "inf" and privacy.extra["steps"] == 4


# ---------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def tiny_npz(mnist, tmp_path_factory):
    path = tmp_path_factory.mktemp("dpdata") / "mini.npz"
    np.savez(path, x=mnist.train.x[:300].numpy(), y=mnist.train.y[:300].numpy(),
             x_test=mnist.test.x[:200].numpy(), y_test=mnist.test.y[:200].numpy())
    return str(path)


def _train(args):
    from poisonguard.cli import main

    return main(["train", *args, "--quiet", "--device", "cpu"])


def test_cli_dp_epsilon_writes_the_privacy_block(tiny_npz, tmp_path, capsys):
    out = tmp_path / "dp"
    rc = _train(["--data", tiny_npz, "--arch", "mnist_cnn", "--dp-epsilon", "8", "--dp-delta", "1e-4",
                 "--max-grad-norm", "1.0", "--epochs", "1", "--batch-size", "100", "--poison", "badnets",
                 "--rate", "0.1", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    privacy = report["privacy"]
    assert privacy["accountant"] == "prv" and privacy["delta"] == 1e-4
    assert 7.5 <= privacy["epsilon"] <= 8.0 and privacy["max_grad_norm"] == 1.0
    assert privacy["extra"]["steps"] == 3 and report["training"]["defense"] == "dp"
    assert report["evaluation"]["attack_success_rate"] is not None and (out / "model.pt").is_file()
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= printed["clean_accuracy"] <= 1


def test_cli_dp_noise_is_gradient_shaping(tiny_npz, tmp_path):
    out = tmp_path / "shape"
    assert _train(["--data", tiny_npz, "--dp-noise", "0.5", "--epochs", "1", "--out", str(out)]) == 0
    privacy = json.loads((out / "report.json").read_text())["privacy"]
    assert privacy["accountant"] == "none" and privacy["epsilon"] == "inf" and privacy["noise_multiplier"] == 0.5


@pytest.mark.parametrize("args, message", [
    (["--dp-epsilon", "0"], "epsilon must be a positive"),
    (["--dp-epsilon", "-2"], "epsilon must be a positive"),
    (["--dp-epsilon", "1", "--dp-delta", "1.5"], "strictly between 0 and 1"),
    (["--dp-epsilon", "1", "--dp-delta", "0.01"], "not below 1/N"),
    (["--dp-epsilon", "1", "--batch-size", "5000"], "larger than the 300"),
    (["--dp-epsilon", "1", "--dp-noise", "1"], "not both"),
    (["--defense", "dp"], "needs --dp-epsilon"),
])
def test_cli_bad_privacy_input_is_one_line_exit_2(tiny_npz, tmp_path, capsys, args, message):
    rc = _train(["--data", tiny_npz, "--epochs", "1", *args, "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1


# ---------------------------------------------------------------- stage


def test_privacy_stage_compares_dp_with_non_private_training(mnist, badnets_trigger_3x3, tmp_path):
    from poisonguard.data import Splits
    from poisonguard.report import Report
    from poisonguard.stages import StageContext, run_stages

    splits = Splits("mini", mnist.train.subset(np.arange(250)), mnist.test.subset(np.arange(200)))
    report = Report("demo")
    ctx = StageContext(command="demo", model=tiny_net(), splits=splits, report=report, out_dir=tmp_path,
                       arch="mnist_cnn", trigger=badnets_trigger_3x3, quick=True, device="cpu")
    assert run_stages(ctx, only=["privacy"])
    block = report.data["privacy"]
    assert block["poisoned_samples"] == 5 and block["accountant"] == "prv" and 7.5 < block["epsilon"] <= 8
    assert set(block["non_private"]) >= {"clean_accuracy", "attack_success_rate"}
    assert report.sections[-1].summary.startswith("With 5 poisoned images out of 250")

    plan_report = Report("checklist")
    ctx = StageContext(command="checklist", model=tiny_net(), splits=splits, report=plan_report, out_dir=tmp_path)
    assert run_stages(ctx, only=["privacy"])
    sigmas = [p["noise_multiplier"] for p in plan_report.data["privacy_plan"]]
    assert sigmas == sorted(sigmas) and "privacy" not in plan_report.data


def test_a_model_with_replaced_layers_is_saved_so_it_loads_back(mnist, tmp_path):
    """BatchNorm -> GroupNorm changes the state dict, so the DP defence saves TorchScript instead."""
    from types import SimpleNamespace

    from poisonguard.data import Splits
    from poisonguard.models import load_model
    from poisonguard.privacy.defenses import _save_fixed
    from poisonguard.report import Report

    fixed, fixes = make_dp_compatible(bn_net())
    splits = Splits("mini", mnist.train.subset(np.arange(10)), mnist.test.subset(np.arange(10)))
    job = SimpleNamespace(out_dir=tmp_path, splits=splits, arch="bn_net", report=Report("train"), saved=False)
    _save_fixed(fixed, job)
    loaded = load_model(tmp_path / "model.pt")
    assert job.saved and loaded.format == "torchscript" and fixes
    x = mnist.test.x[:4]
    torch.testing.assert_close(loaded.model(x), fixed.eval()(x))
    assert job.report.data["model"]["based_on"] == "bn_net"
