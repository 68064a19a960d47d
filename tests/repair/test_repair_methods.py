"""Every registered repair method, on the shared BadNets fixture (MNIST 5k, mnist_cnn, 3x3 patch, 10%).

Each gets 5% of the training data and must remove the planted backdoor clearly (see
ASR_BUDGET); the issue's goal figures (<= 5% ASR, <= 3 points) are measured in
benchmarks/repair_mnist.py, not asserted here at their edge. Conformance tests generated
over the registry check what every method promises (untouched input, seed determinism,
ValueError for bad numbers, JSON round trip).
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from poisonguard.data import per_class_subset
from poisonguard.errors import UserError
from poisonguard.repair import REPAIRERS, FinePruning, Refit, Unlearning, Wild
from poisonguard.repair.fine_pruning import find_prune_layer
from poisonguard.repair.base import applies_to, distillation_loss, finetune, random_shift
from poisonguard.repair.refit import diagonal_fisher, ewc_penalty
from poisonguard.repair.wild import mmd, random_erase

# After repair, every method must leave at most this attack success rate, and at most a fifth
# of what it was, losing at most ACCURACY_BUDGET of clean accuracy. Measured on fixture seeds
# 0, 1, 2 with 1 and 2 threads (benchmarks/results/issue-14.md): worst ASR 0.052 (REFIT, seed 0),
# worst loss 0.026 (WILD), so these leave about 3x and 2x headroom.
ASR_BUDGET = 0.15
# The MNIST fixture is for the methods that take images (tables' repairers are tested in tests/tabular).
IMAGE_METHODS = [n for n in REPAIRERS.names() if applies_to(n, "image")]
ACCURACY_BUDGET = 0.05

@pytest.fixture(scope="module")
def clean(mnist):
    return per_class_subset(mnist.train, fraction=0.05, seed=0)


def test_registry_lists_the_four_methods():
    assert {"fine_pruning", "refit", "wild", "unlearn"} <= set(REPAIRERS.names())
    assert REPAIRERS.get("fine-pruning") is FinePruning


@pytest.mark.parametrize("name", IMAGE_METHODS)
def test_method_removes_planted_backdoor(name, mnist, clean, badnets_model, badnets_trigger_3x3):
    result = REPAIRERS.get(name)(seed=0, device="cpu").repair(
        badnets_model, clean, trigger=badnets_trigger_3x3, test=mnist.test)
    before, after = result.before.attack_success_rate, result.after.attack_success_rate
    assert before > 0.9
    assert after <= ASR_BUDGET and after <= before / 5, result.to_dict()
    assert result.after.clean_accuracy >= result.before.clean_accuracy - ACCURACY_BUDGET, result.to_dict()
    assert result.extra["attack_success_rate_trigger"] == "real"


# ---------------------------------------------------------------- conformance, generated over the registry

def _tiny_cnn_task():
    """24 8x8 images of 3 classes (a bright quadrant per class) and a small CNN: enough for every method's code path."""
    from poisonguard.data import ImageData

    g = torch.Generator().manual_seed(0)
    y = torch.arange(24) % 3
    x = torch.rand(24, 1, 8, 8, generator=g) * 0.2
    for k in range(3):
        x[y == k, :, (k // 2) * 4:(k // 2) * 4 + 4, (k % 2) * 4:(k % 2) * 4 + 4] += 0.7
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(60):  # learn the task, so fine-tuning starts below chance-level loss as on a real model
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return ImageData(x, y, ("a", "b", "c")), model.eval()


SHORT = {"epochs": 1, "batch_size": 8}  # every repairer takes these


@pytest.fixture(scope="module")
def tiny():
    from poisonguard.attacks import badnets_trigger

    data, model = _tiny_cnn_task()
    return data, model, badnets_trigger(data.input_shape, target=0, size=2)


@pytest.mark.parametrize("name", IMAGE_METHODS)
def test_conformance_input_untouched_seeded_and_json(name, tiny):
    data, model, trigger = tiny
    cls = REPAIRERS.get(name)
    kwargs = {**SHORT, **({"reverse_epochs": 2} if name == "unlearn" else {})}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    first = cls(seed=3, device="cpu", **kwargs).repair(model, data, trigger=trigger)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert first.model is not model
    second = cls(seed=3, device="cpu", **kwargs).repair(model, data, trigger=trigger)
    for (k, a), b in zip(first.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), f"{name}: seed 3 twice gave different {k}"
    entry = json.loads(json.dumps(first.to_dict()))
    assert entry["method"] == name == cls.name and "model" not in entry
    assert entry["before"] == first.before.to_dict() and entry["after"] == first.after.to_dict()
    assert entry["extra"]["attack_success_rate_trigger"] == "real"


@pytest.mark.parametrize("name", IMAGE_METHODS)
@pytest.mark.parametrize("bad", [{"epochs": -1}, {"lr": 0.0}, {"batch_size": 0}, {"lr": float("nan")}])
def test_conformance_bad_hyperparameters_raise_valueerror(name, bad):
    with pytest.raises(ValueError) as info:
        REPAIRERS.get(name)(**bad)
    assert type(info.value) is ValueError  # the library's own check, not a CLI UserError
    assert next(iter(bad)) in str(info.value)


def test_fine_pruning_prunes_dormant_channels_and_records_curve(mnist, clean, badnets_model, badnets_trigger_3x3):
    result = FinePruning(epochs=1, seed=0, device="cpu").repair(badnets_model, clean, trigger=badnets_trigger_3x3)
    extra = result.extra
    assert extra["layer"] == "0.4"  # mnist_cnn's second (last) convolution
    assert 0 < extra["pruned_channels"] < extra["channels"] == 32
    curve = extra["curve"]
    assert curve[0]["pruned"] == 0 and len(curve) >= extra["pruned_channels"] + 1
    assert all(c["attack_success_rate"] is not None for c in curve)
    # Pruned channels output exactly zero in the saved weights.
    conv = dict(result.model.named_modules())["0.4"]
    assert torch.all(conv.weight[extra["pruned_indices"]] == 0)


def test_fine_pruning_without_conv_names_prunable_layers():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(UserError, match=r"no convolutional layer.*1 \(Linear, 8 channels\)"):
        find_prune_layer(mlp, torch.rand(2, 1, 2, 2))
    assert find_prune_layer(mlp, torch.rand(2, 1, 2, 2), "1") == "1"
    with pytest.raises(UserError, match="cannot prune layer 'nope'"):
        find_prune_layer(mlp, torch.rand(2, 1, 2, 2), "nope")


@pytest.mark.parametrize("cls,kwargs", [
    (FinePruning, {"max_accuracy_drop": 1.5}), (FinePruning, {"epochs": -1}), (Refit, {"lr": 0.0}),
    (Refit, {"ewc_lambda": -1}), (Wild, {"erase_p": 2}), (Wild, {"optimizer": "rmsprop"}),
    (Unlearning, {"mode": "bogus"}), (Unlearning, {"stamp_share": 0}),
])
def test_bad_hyperparameters_raise_clear_errors(cls, kwargs):
    with pytest.raises(ValueError):
        cls(**kwargs)


def test_no_clean_data_and_unfitting_trigger_are_refused(mnist, badnets_model, badnets_trigger_3x3):
    from poisonguard.attacks import badnets_trigger

    empty = mnist.train.subset(torch.arange(0))
    with pytest.raises(UserError, match="clean"):
        Refit().repair(badnets_model, empty)
    colour = badnets_trigger((3, 28, 28), target=0)
    with pytest.raises(UserError, match="trigger"):
        Refit(device="cpu").repair(badnets_model, mnist.train.subset(torch.arange(50)), trigger=colour)
    with pytest.raises(ValueError, match="mask-and-pattern"):
        Unlearning(triggers=[object()])


def test_unlearning_prune_and_filter_modes(mnist, clean, badnets_model, badnets_trigger_3x3):
    pruned = Unlearning(mode="prune", triggers=[badnets_trigger_3x3], seed=0, device="cpu").repair(
        badnets_model, clean, trigger=badnets_trigger_3x3, test=mnist.test)
    assert pruned.extra["pruned_neurons"] > 0
    assert pruned.after.attack_success_rate < pruned.before.attack_success_rate
    filtered = Unlearning(mode="filter", triggers=[badnets_trigger_3x3], seed=0, device="cpu").repair(
        badnets_model, clean, trigger=badnets_trigger_3x3)
    assert filtered.extra["filter_false_positive_rate_clean"] <= 0.06
    assert filtered.extra["filter_detection_rate_real_trigger"] > 0.8
    # a scan's own trigger given back is no "real one" for the filter's report
    from dataclasses import replace

    scanned = replace(badnets_trigger_3x3, origin="reconstructed")
    filtered = Unlearning(mode="filter", triggers=[scanned], seed=0, device="cpu").repair(badnets_model, clean,
                                                                                         trigger=scanned)
    assert "filter_detection_rate_real_trigger" not in filtered.extra


# ---------------------------------------------------------------- the math, on known answers

def test_mmd_is_zero_for_identical_sets_and_grows_with_shift():
    a = torch.randn(32, 8, generator=torch.Generator().manual_seed(0))
    assert float(mmd(a, a)) == pytest.approx(0.0, abs=1e-6)
    assert float(mmd(a, a + 3)) > float(mmd(a, a + 0.3)) > 0


def test_fisher_and_ewc_penalty_on_a_linear_model():
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    x, y = torch.tensor([[1.0, 0.0]]), torch.tensor([0])
    fisher = diagonal_fisher(model, x, y)
    # logits 0 -> p = (1/2, 1/2); d(-log p_0)/dW = (p - onehot) x^T = [[-1/2, 0], [1/2, 0]]
    assert torch.allclose(fisher["weight"], torch.tensor([[0.25, 0.0], [0.25, 0.0]]))
    anchor = {"weight": model.weight.detach().clone()}
    with torch.no_grad():
        model.weight += 2.0
    assert float(ewc_penalty(model, fisher, anchor).detach()) == pytest.approx((0.25 * 4 + 0.25 * 4) / 2)


def test_random_erase_changes_a_rectangle_only():
    x = torch.zeros(4, 1, 10, 10)
    out = random_erase(x, torch.Generator().manual_seed(0), p=1.0)
    changed = (out != x).any(1)
    assert changed.any() and out.min() >= 0 and out.max() <= 1
    for img in changed:
        rows, cols = torch.nonzero(img, as_tuple=True)
        if len(rows):  # a constant fill of 0 may leave nothing visible
            box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
            assert box <= 0.25 * 100 * 1.3


def test_random_shift_moves_each_image_within_the_limit():
    x = torch.zeros(6, 1, 8, 8)
    x[:, :, 3:5, 3:5] = 1.0  # a 2x2 square in the middle
    out = random_shift(x, torch.Generator().manual_seed(0), max_shift=2)
    assert out.shape == x.shape and torch.equal(out.sum((1, 2, 3)), x.sum((1, 2, 3)))  # nothing falls off
    for img in out[:, 0]:
        rows, cols = torch.nonzero(img, as_tuple=True)
        assert rows.max() - rows.min() == 1 and cols.max() - cols.min() == 1  # still one 2x2 square
        assert 1 <= rows.min() <= 5 and 1 <= cols.min() <= 5  # moved by at most 2 pixels
    assert torch.equal(random_shift(x, torch.Generator(), max_shift=0), x)
    # a model that flattens with .view after a convolution takes the shifted batch (it failed:
    # the strided result kept its layout through the convolution)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    colour = random_shift(torch.rand(5, 3, 8, 8), torch.Generator().manual_seed(0), max_shift=2)
    assert conv(colour).view(5, -1).shape == (5, 256)


def test_distillation_loss_is_zero_on_agreement_and_tempered():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    assert float(distillation_loss(logits, logits, 2.0)) == pytest.approx(0.0, abs=1e-7)
    other = torch.tensor([[0.0, 2.0, -1.0]])
    p, q = torch.softmax(other / 2, 1), torch.softmax(logits / 2, 1)
    expected = float((p * (p.log() - q.log())).sum()) * 4  # KL(teacher || student) * T^2
    assert float(distillation_loss(logits, other, 2.0)) == pytest.approx(expected, rel=1e-5)


def _tiny_data_and_model():
    """16 images whose class is written in pixel 0 or 1, and a linear model that already reads it."""
    from poisonguard.data import ImageData

    y = torch.arange(16) % 2
    x = torch.zeros(16, 1, 4, 4)
    x[torch.arange(16), 0, 0, y] = 1.0
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.zero_()
        model[1].weight[0, 0] = model[1].weight[1, 1] = 5.0
    return ImageData(x, y, ("a", "b")), model


def test_finetune_restarts_a_collapsed_run_but_allows_a_spike():
    data, model = _tiny_data_and_model()
    calls = {"n": 0}

    def collapsed(m, x, y):  # far above chance level for the first run's batches, normal after
        calls["n"] += 1
        return torch.nn.functional.cross_entropy(m(x), y) + (100.0 if calls["n"] <= 6 else 0.0)

    info: dict = {}
    finetune(model, data, epochs=8, lr=0.1, batch_size=8, generator=torch.Generator().manual_seed(0),
             device=torch.device("cpu"), loss_fn=collapsed, info=info)
    assert info["lr_restarts"] >= 1 and info["lr_used"] < 0.1
    epochs_seen = {"n": 0}

    def spike(m, x, y):  # one bad epoch (its batches 3-4), then normal
        epochs_seen["n"] += 1
        return torch.nn.functional.cross_entropy(m(x), y) + (100.0 if epochs_seen["n"] in (3, 4) else 0.0)

    info = {}
    finetune(model, data, epochs=8, lr=0.1, batch_size=8, generator=torch.Generator().manual_seed(0),
             device=torch.device("cpu"), loss_fn=spike, info=info)
    assert info["lr_restarts"] == 0


def test_a_reconstructed_trigger_file_is_never_called_the_real_one(mnist, clean, badnets_model, badnets_trigger_3x3):
    """`repair --trigger scan/trigger_0.npz` measured with a scan's reconstruction and called it "real"."""
    from dataclasses import replace

    from poisonguard.repair.base import Repairer

    class Untouched(Repairer):
        name = "untouched"

        def _run(self, ctx):
            return {}

    few = per_class_subset(mnist.test, fraction=0.1, seed=0)
    got = {}
    for origin in ("attack", "reconstructed", None):
        trigger = replace(badnets_trigger_3x3, origin=origin)
        got[origin] = Untouched().repair(badnets_model, clean, trigger=trigger, test=few).extra
    assert got["attack"]["attack_success_rate_trigger"] == "real"
    assert got["reconstructed"]["attack_success_rate_trigger"] == "reconstructed"
    assert got["reconstructed"]["trigger_reconstructed_by"] == "scan"
    assert got[None]["attack_success_rate_trigger"] == "given"


def test_a_fine_tune_that_diverges_at_every_rate_says_why_and_restarts_only_what_it_runs(monkeypatch, caplog):
    """On a softmax-output model the log of saturated probabilities is flat: the advice to lower the
    learning rate could never help, and the last failure announced a restart that never came."""
    import poisonguard.repair.base as base
    from poisonguard.data import ImageData
    from poisonguard.models.wrappers import InputAdapter

    monkeypatch.setattr(base, "_finetune_once", lambda *a, **k: None)  # every attempt diverges
    data = ImageData(torch.rand(8, 1, 4, 4), torch.arange(8) % 2, ("a", "b"))
    plain = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    for model, words in ((plain, "lower the learning rate"),
                         (InputAdapter(nn.Sequential(plain, nn.Softmax(1)), log_outputs=True), "ends in a softmax")):
        caplog.clear()
        with caplog.at_level("WARNING"), pytest.raises(UserError, match=words):
            finetune(model, data, epochs=1, lr=0.1, batch_size=4, generator=torch.Generator(), device="cpu",
                     max_retries=2)
        assert caplog.text.count("restarting") == 2


def test_unlearn_on_two_classes_asks_for_a_scans_triggers():
    """Its own Neural Cleanse run cannot judge two classes; the refusal named reference_contrast,
    which is no option of repair, instead of --from-scan, which works."""
    from poisonguard.data import ImageData

    data = ImageData(torch.rand(40, 5), torch.arange(40) % 2, ("no", "yes"), kind="tabular")
    with pytest.raises(UserError, match="--from-scan"):
        Unlearning(seed=0, device="cpu").repair(nn.Sequential(nn.Linear(5, 2)), data)
