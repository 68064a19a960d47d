"""Every registered detector finds a planted backdoor with its target and leaves a clean model alone."""

import copy

import pytest
import torch

from poisonguard.data import per_class_subset
from poisonguard.detect import DETECTORS
from poisonguard.errors import UserError

# Short settings: the fixtures' backdoor is strong, a full-length scan is not needed to find it.
FAST = {
    "neural_cleanse": {"epochs": 20},
    "tabor": {"epochs": 20},
    "deepinspect": {},
    # Only its trigger file round trip is tested here (it targets warps/blends/filters, not this
    # fixture's patch; its figures come from benchmarks/feature_re_tune.py): a few steps suffice.
    "feature_re": {"steps": 10},
}


@pytest.fixture(scope="module")
def clean_data(mnist):
    return per_class_subset(mnist.train, fraction=0.05, seed=0)


@pytest.fixture(scope="module")
def scans(badnets_model, clean_data):
    # The image detectors; those registered for other inputs (reference_contrast: tables) have their own suites.
    return {name: DETECTORS.get(name)(seed=0, device="cpu", **FAST[name]).detect(badnets_model, clean_data)
            for name in FAST}


# How much smaller the target's trigger is than any other class's, at the least, on this
# fixture: NC/TABOR optimise a mask (about 6 vs >= 35), DeepInspect an additive perturbation
# from synthesised inputs (about 24 vs >= 35).
SMALLER_BY = {"neural_cleanse": 3.0, "tabor": 3.0, "deepinspect": 1.2}


@pytest.mark.parametrize("name", ["neural_cleanse", "tabor", "deepinspect"])
def test_planted_target_has_the_smallest_trigger(scans, name):
    det = scans[name]
    sizes = list(det.mask_l1)
    assert sizes.index(min(sizes)) == 0  # the fixture's target
    assert min(sizes[1:]) > SMALLER_BY[name] * sizes[0]


@pytest.mark.parametrize("name", ["neural_cleanse", "tabor"])
def test_planted_backdoor_found_with_its_target_by_the_verdict_statistic(scans, name):
    # Each method alone under the verdict's default rule (log-space lower-half MAD, uncalibrated):
    # the paper's two-sided MAD index stays near 2 on this fixture (notes/issue-3.md), this one does not.
    from poisonguard.detect.verdict import judge

    det = scans[name]
    verdict = judge([det], fpr=0.05)
    assert verdict.backdoored and verdict.targets == (0,)
    rows = sorted(verdict.method_rows(name), key=lambda e: -e["statistic"])
    assert rows[0]["class"] == 0 and rows[0]["statistic"] > rows[0]["threshold"]
    assert rows[1]["statistic"] < rows[1]["threshold"]  # no other class comes near
    assert det.masks.shape == (10, 28, 28) and det.patterns.shape == (10, 1, 28, 28)
    assert det.to_dict()["method"] == name and "masks" not in det.to_dict()


def test_feature_re_writes_a_generator_trigger_that_evaluate_reads(scans, tmp_path, badnets_model, mnist):
    from poisonguard.attacks import load_trigger, save_trigger
    from poisonguard.attacks.triggers import GeneratorTrigger
    from poisonguard.train import evaluate

    # The file round trip only: FeatureRE's generator (a translation-equivariant conv) does not
    # reach a corner patch's target (attack success ~1% on the zoo's patch models too; it finds
    # WaNet/blend/filter targets, benchmarks/results/issue-16.md), so no detection is asserted.
    det = scans["feature_re"]
    assert len(det.triggers) == 10 and det.masks is None and len(det.extra["attack_success"]) == 10
    save_trigger(det.triggers[0], tmp_path / "t.npz")
    loaded = load_trigger(tmp_path / "t.npz")
    assert isinstance(loaded, GeneratorTrigger) and loaded.target == 0
    assert torch.equal(loaded.apply(mnist.test.x[:8]), det.triggers[0].apply(mnist.test.x[:8]))
    assert 0 <= evaluate(badnets_model, mnist.test, loaded).attack_success_rate <= 1


def test_nc_trigger_is_small_and_in_the_corner(scans):
    mask = scans["neural_cleanse"].masks[0]
    assert mask.sum() < 20  # the planted patch has 9 pixels
    rows, cols = torch.nonzero(mask > 0.5, as_tuple=True)
    assert len(rows) and rows.float().mean() > 20 and cols.float().mean() > 20  # bottom right


@pytest.mark.parametrize("name", ["neural_cleanse", "deepinspect"])
def test_clean_model_not_flagged(clean_model, clean_data, name):
    det = DETECTORS.get(name)(seed=0, device="cpu", **FAST[name]).detect(clean_model, clean_data)
    assert not det.backdoored, det.anomaly_index


def test_deepinspect_needs_no_data(badnets_model):
    det = DETECTORS.get("deepinspect")(seed=0, device="cpu", **FAST["deepinspect"]).detect(
        badnets_model, None, input_shape=(1, 28, 28))
    assert det.flagged_classes[:1] == (0,)


def test_same_seed_same_result_and_model_untouched(badnets_model, clean_data):
    before = copy.deepcopy(badnets_model.state_dict())
    run = lambda: DETECTORS.get("neural_cleanse")(seed=3, device="cpu", epochs=3).detect(
        badnets_model, clean_data, targets=[0, 1, 2, 3])
    a, b = run(), run()
    assert a.anomaly_index == b.anomaly_index and a.flagged_classes == b.flagged_classes
    assert torch.equal(a.masks, b.masks)
    assert all(torch.equal(v, badnets_model.state_dict()[k]) for k, v in before.items())
    assert all(p.requires_grad for p in badnets_model.parameters())


def test_batched_engine_equals_one_class_at_a_time(badnets_model, clean_data):
    from poisonguard.detect.engine import InversionConfig, frozen_copy, invert_triggers

    model = frozen_copy(badnets_model, torch.device("cpu"))
    config = InversionConfig(epochs=3)
    together = invert_triggers(model, clean_data.x, clean_data.y, targets=[0, 4, 7], num_classes=10, config=config)
    alone = [invert_triggers(model, clean_data.x, clean_data.y, targets=[t], num_classes=10, config=config)
             for t in (0, 4, 7)]
    for i, single in enumerate(alone):
        assert torch.allclose(together.masks[i], single.masks[0], atol=1e-4)


def test_an_epoch_draws_at_least_the_floor_of_images_from_a_small_clean_set(badnets_model, clean_data):
    # NC draws a fixed number of samples per epoch; one pass over 40 images would be 2 steps.
    from poisonguard.detect.engine import InversionConfig, frozen_copy, invert_triggers

    model = frozen_copy(badnets_model, torch.device("cpu"))
    steps = []
    model.register_forward_pre_hook(lambda _m, inp: steps.append(1) if inp[0].requires_grad else None)
    few = per_class_subset(clean_data, per_class=4, seed=0)
    invert_triggers(model, few.x, few.y, targets=[0], num_classes=10, config=InversionConfig(epochs=1))
    assert len(few) == 40 and len(steps) == 7   # ceil(200 / 32), not ceil(40 / 32) = 2
    steps.clear()
    invert_triggers(model, few.x, few.y, targets=[0], num_classes=10,
                    config=InversionConfig(epochs=1, min_samples_per_epoch=1))
    assert len(steps) == 2


def test_chunks_and_pruning(badnets_model, clean_data):
    det = DETECTORS.get("neural_cleanse")(seed=0, device="cpu", epochs=4, chunk_classes=4, prune_after=2,
                                          prune_keep=0.5).detect(badnets_model, clean_data)
    assert len(det.anomaly_index) == 10
    assert det.extra["chunk_classes"] == 4
    assert sum(det.extra["pruned"]) > 0


@pytest.mark.parametrize("kwargs", [{"epochs": 0}, {"lr": -1.0}, {"threshold": float("nan")}, {"batch_size": 0},
                                    {"cost_multiplier": 1.0}, {"prune_keep": 0.0}])
def test_bad_hyperparameters(kwargs):
    with pytest.raises(ValueError):
        DETECTORS.get("neural_cleanse")(**kwargs)


def test_bad_models(clean_data):
    class NotAClassifier(torch.nn.Module):
        def forward(self, x):
            return x

    class NaNModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(784, 10)

        def forward(self, x):
            return self.lin(x.flatten(1)) * float("nan")

    nc = DETECTORS.get("neural_cleanse")(device="cpu")
    with pytest.raises(UserError, match="not a classifier"):
        nc.detect(NotAClassifier(), clean_data)
    with pytest.raises(UserError, match="NaN"):
        nc.detect(NaNModel(), clean_data)
    with pytest.raises(UserError, match="needs clean data"):
        nc.detect(NaNModel(), None)
    wrong = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    with pytest.raises(UserError, match="does not accept"):
        nc.detect(wrong, clean_data)
