"""The scan verdict: thresholds that keep their false-positive rate, calibration, the paper rule, NC's schedule,
and the default verdict on the planted-backdoor and clean fixtures."""

from __future__ import annotations

import math

import pytest
import torch

from poisonguard.data import per_class_subset
from poisonguard.detect.calibration import fit_null
from poisonguard.detect.engine import CostSchedule
from poisonguard.detect.verdict import QUICK_VERDICT_METHODS, judge, scan_verdict
from poisonguard.results import Detection


def _det(sizes, method="neural_cleanse", flagged=(), index=None, threshold=2.0) -> Detection:
    k = len(sizes)
    return Detection(method=method, backdoored=bool(flagged), flagged_classes=tuple(flagged),
                     anomaly_index=tuple(index or [0.0] * k), seconds=0.0, mask_l1=tuple(float(s) for s in sizes),
                     threshold=threshold, extra={"targets": list(range(k))})


def _clean_sizes(gen, n_models, class_effect, spread=0.25):
    """Synthetic clean models: log size = the class's natural difficulty + a per-model offset + per-class noise.

    `spread` is one number or a (K,) tensor (classes whose inversion is noisier than others').
    """
    k = len(class_effect)
    offset = 0.2 * torch.randn(n_models, 1, generator=gen, dtype=torch.float64)
    return (class_effect + offset + spread * torch.randn(n_models, k, generator=gen, dtype=torch.float64)).exp()


@pytest.mark.parametrize("statistic", ["robust", "lower_mad"])
def test_calibration_reaches_its_fpr_on_clean_reference_models(statistic):
    # Classes differ in natural difficulty (as digits do) and in how noisy their trigger size is
    # from model to model. 30 independent calibrations, each on 4 clean reference models (the
    # scan's default), judge 100 fresh clean models each. A calibration's false-positive rate
    # varies with its references, so the interval is over calibrations (t interval of their
    # mean rate), and the stated 5% must lie inside it. Version 1's log-normal null measured
    # about 10% here; the uncalibrated prior, blind to the class effects, flags most models.
    from poisonguard.detect.anomaly import INDEX_ROWS
    from poisonguard.detect.verdict import DEFAULT_NULL, index_threshold
    from scipy.stats import t

    gen = torch.Generator().manual_seed(1)
    effect = torch.tensor([4.0, 2.6, 4.2, 3.6, 4.1, 3.9, 4.3, 4.0, 3.5, 4.2], dtype=torch.float64)
    spread = torch.linspace(0.12, 0.4, 10, dtype=torch.float64)
    rates = []
    for _ in range(30):
        null = fit_null(_clean_sizes(gen, 4, effect, spread).tolist())
        fresh = _clean_sizes(gen, 100, effect, spread).log() - torch.tensor(null["reference"], dtype=torch.float64)
        threshold = index_threshold(null, 0.05, 1, statistic=statistic)
        rates.append(float((INDEX_ROWS[statistic](fresh).amax(1) > threshold).double().mean()))
    r = torch.tensor(rates, dtype=torch.float64)
    half = float(t.ppf(0.975, len(r) - 1)) * float(r.std()) / len(r) ** 0.5
    assert float(r.mean()) - half <= 0.05 <= float(r.mean()) + half, (float(r.mean()), half)
    top = INDEX_ROWS[statistic](_clean_sizes(gen, 300, effect, spread).log()).amax(1)
    assert float((top > index_threshold(DEFAULT_NULL, 0.05, 1, statistic=statistic)).double().mean()) > 0.2


def test_calibration_p_values_follow_the_simulated_null():
    # The threshold is the (1 - fpr) quantile of the simulated largest index, and a class at the
    # threshold gets p near fpr: the verdict's flag and its p-value say the same thing.
    from poisonguard.detect.verdict import class_p_values, index_threshold

    gen = torch.Generator().manual_seed(3)
    null = fit_null(_clean_sizes(gen, 4, torch.full((10,), 4.0, dtype=torch.float64)).tolist())
    thr = index_threshold(null, 0.05, 1)
    p = class_p_values(torch.tensor([0.0, thr, 2 * thr]), null)
    assert p[0] > 0.9 and abs(p[1] - 0.05) < 0.005 and p[2] < 0.01
    assert index_threshold(null, 0.05, 2) > thr  # Bonferroni over two methods: a higher bar


def test_calibrated_verdict_still_finds_a_small_target():
    gen = torch.Generator().manual_seed(2)
    effect = torch.full((10,), 4.0, dtype=torch.float64)
    null = fit_null(_clean_sizes(gen, 10, effect).tolist())
    sizes = _clean_sizes(gen, 1, effect)[0].clone()
    sizes[7] = sizes[7] / 10  # a backdoor: one class needs a 10x smaller trigger

    class Cal:
        def null_for(self, method):
            return null

        def summary(self):
            return {"calibrated": True}

    verdict = judge([_det(sizes.tolist())], calibration=Cal())
    assert verdict.backdoored and verdict.targets == (7,) and verdict.calibrated and verdict.score > 0.95


def test_paper_statistic_is_each_papers_own_rule():
    a = _det([50, 60, 55, 70, 58, 62, 5, 64, 59, 61], flagged=(6,), index=[0.1] * 6 + [2.5] + [0.1] * 3)
    b = _det([50, 60, 55, 70, 58, 62, 50, 64, 59, 61], method="deepinspect")
    v = judge([a, b], statistic="paper")
    assert v.backdoored and v.targets == (6,)
    rows = {(e["method"], e["class"]): e for e in v.evidence}
    assert rows[("neural_cleanse", 6)]["threshold"] == 2.0 and rows[("neural_cleanse", 6)]["statistic"] == 2.5
    assert rows[("deepinspect", 6)]["agreed"] is False and v.disagreements and "Class 6" in v.disagreements[0]


def test_verdict_targets_agreement_and_json():
    small = [40, 45, 50, 55, 60, 42, 48, 52, 3, 58]
    v = judge([_det(small), _det([40, 45, 50, 55, 60, 42, 48, 52, 44, 58], method="feature_re")])
    d = v.to_dict()
    assert d["backdoored"] and d["targets"] == [8] and 0 <= d["score"] <= 1 and d["false_positive_rate"] == 0.05
    assert {"backdoored", "targets", "score", "false_positive_rate", "evidence"} <= set(d)
    assert len(d["evidence"]) == 20 and all({"statistic", "threshold", "agreed"} <= set(e) for e in d["evidence"])
    assert "BACKDOORED" in v.sentence and "class 8" in v.sentence and "UNCALIBRATED" in v.sentence
    clean = judge([_det([40, 45, 50, 55, 60, 42, 48, 52, 44, 58])])
    assert not clean.backdoored and clean.sentence.startswith("No backdoor found")
    with pytest.raises(ValueError):
        judge([_det(small)], fpr=0.0)


def test_cost_schedule_follows_the_papers_counters():
    # NC (authors' visualizer.py), patience 2, multiplier 2: with cost 0 two successes set the
    # initial cost and reset the flags; then two successes raise it, two failures lower it by 2^1.5.
    s = CostSchedule.start(1, 0.0)
    rows = torch.tensor([0])
    yes, no = torch.tensor([True]), torch.tensor([False])
    step = lambda s, ok: s.step(rows, ok, init_cost=1e-3, multiplier=2.0, patience=2)
    s = step(s, yes)
    assert float(s.cost[0]) == 0.0 and int(s.set_count[0]) == 1
    s = step(s, yes)
    assert float(s.cost[0]) == 1e-3 and not bool(s.up_flag[0])
    s = step(s, yes)  # the up counter kept counting on the cost-set epoch: 3 successes -> up
    assert math.isclose(float(s.cost[0]), 2e-3) and bool(s.up_flag[0])
    s = step(step(s, no), no)
    assert math.isclose(float(s.cost[0]), 2e-3 / 2 ** 1.5) and bool(s.down_flag[0])
    before = s.cost.clone()
    step(s, yes)
    assert torch.equal(s.cost, before)  # pure: the old schedule is unchanged
    # A failure while at cost 0 resets the cost-set counter.
    z = step(step(CostSchedule.start(1, 0.0), yes), no)
    assert int(z.set_count[0]) == 0 and float(z.cost[0]) == 0.0


@pytest.fixture(scope="module")
def verdict_data(mnist):
    return per_class_subset(mnist.train, fraction=0.05, seed=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_verdict_finds_the_planted_backdoor_and_spares_the_clean_model(badnets_model, clean_model,
                                                                                verdict_data, seed):
    options = {"neural_cleanse": {"epochs": 12, "early_stop_patience": 4, "patience": 2}, "deepinspect": {"steps": 150}}
    bad = scan_verdict(badnets_model, verdict_data, methods=QUICK_VERDICT_METHODS, seed=seed, device="cpu",
                          options=options)
    assert bad.backdoored and bad.targets[0] == 0, bad.evidence
    good = scan_verdict(clean_model, verdict_data, methods=QUICK_VERDICT_METHODS, seed=seed, device="cpu",
                           options=options)
    assert not good.backdoored, [e for e in good.evidence if e["flagged"]]


def test_same_seed_same_verdict(badnets_model, verdict_data):
    options = {"neural_cleanse": {"epochs": 4}}
    a = scan_verdict(badnets_model, verdict_data, methods=("neural_cleanse",), seed=5, device="cpu", options=options)
    b = scan_verdict(badnets_model, verdict_data, methods=("neural_cleanse",), seed=5, device="cpu", options=options)
    assert a.to_dict() == b.to_dict()


def test_api_scan_returns_the_verdict_and_routes_options():
    # `epochs` is Neural Cleanse's; DeepInspect has none and must not receive it; a dict under a
    # method's name reaches that method only; an option no selected method takes is a UserError.
    import poisonguard
    from poisonguard.detect.verdict import Verdict, route_options
    from poisonguard.errors import UserError
    from torch import nn

    torch.manual_seed(0)
    x, y = torch.rand(48, 1, 8, 8), torch.arange(48) % 3
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3))
    routed = route_options(["neural-cleanse", "deepinspect"], {"epochs": 1, "deepinspect": {"steps": 3}})
    assert routed == {"neural_cleanse": {"epochs": 1}, "deepinspect": {"steps": 3}}
    v = poisonguard.scan(model, x, y, methods=["neural_cleanse", "deepinspect"], epochs=1,
                         deepinspect={"steps": 3, "inversion_steps": 3, "samples": 4})
    assert isinstance(v, Verdict) and v.methods == ("neural_cleanse", "deepinspect") and not v.calibrated
    assert [d.method for d in v.detections] == ["neural_cleanse", "deepinspect"]
    assert v.detections[0].extra["epochs"] and max(v.detections[0].extra["epochs"]) <= 1
    with pytest.raises(UserError, match="no selected method"):
        route_options(["deepinspect"], {"epochs": 1})
    with pytest.raises(UserError, match="has no option"):
        route_options(["deepinspect"], {"deepinspect": {"epochs": 1}})
    # what a notebook user types: the CLI's word for calibration, a DataLoader, one method as a string
    with pytest.raises(UserError, match="calibration must be a Calibration"):
        poisonguard.scan(model, x, y, methods=["deepinspect"], calibration="auto")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    with pytest.raises(UserError, match="tensors or arrays"):
        poisonguard.scan(model, loader, y, methods=["deepinspect"])
    one = poisonguard.scan(model, x, y, methods="deepinspect", deepinspect={"steps": 2, "inversion_steps": 2, "samples": 4})
    assert one.methods == ("deepinspect",)
    # rows of a table: said plainly (it was "images must be (N, C, H, W)", then "not a classifier")
    with pytest.raises(UserError, match="Tables and text run on the command line"):
        poisonguard.scan(nn.Linear(30, 2), torch.rand(20, 30), torch.arange(20) % 2)


def test_clean_share_caps_images_balanced_and_says_so():
    from types import SimpleNamespace

    from poisonguard.data import ImageData
    from poisonguard.detect.report import _data_words
    from poisonguard.detect.scan import clean_share

    y = torch.arange(10).repeat(300)
    images = ImageData(torch.rand(len(y), 3, 4, 4), y, tuple(str(i) for i in range(10)))
    splits = SimpleNamespace(train=images, kind="image", num_classes=10)
    clean, pool = clean_share(splits, fraction=0.05, seed=0)
    assert (len(clean), pool) == (150, None)  # under the default cap: untouched
    clean, pool = clean_share(splits, fraction=0.05, seed=0, cap=50)
    assert pool == 150 and len(clean) == 50 and torch.bincount(clean.y).tolist() == [5] * 10
    words = _data_words(SimpleNamespace(data={"clean_images": 50, "clean_fraction": 0.05, "capped_from": pool}))
    assert "50 clean images" in words and "150" in words and "5%" in words
    rows = ImageData(torch.rand(len(y), 6), y, tuple(str(i) for i in range(10)), kind="tabular")
    clean, pool = clean_share(SimpleNamespace(train=rows, kind="tabular", num_classes=10), fraction=0.5, seed=0, cap=50)
    assert (len(clean), pool) == (1500, None)  # tables are never capped


def test_reference_contrast_is_judged_per_class_at_any_number_of_classes():
    """Five classes, one of them censored at the whole input (no contrast found on any model).
    A model that sits apart from the references at every class (trained on other rows) is not a
    backdoor; one class far below the same class on the references is. The MAD across five
    classes that the other methods use read the censored class as spread (notes/issue-19.md)."""
    from poisonguard.detect.anomaly import reference_index
    from poisonguard.detect.calibration import PER_CLASS_NULL
    from poisonguard.detect.verdict import index_threshold

    assert "reference_contrast" in PER_CLASS_NULL
    gen = torch.Generator().manual_seed(3)
    effect = torch.tensor([2.8, 2.7, 2.5, 2.0, math.log(18.0)], dtype=torch.float64)
    refs = _clean_sizes(gen, 8, effect, spread=0.15)
    refs[:, 4] = 18.0
    null = fit_null(refs.tolist(), per_class=True)
    assert "reference_sd" in null and "scales" not in null
    bar = index_threshold(null, 0.05, 1)
    mean = torch.tensor(null["reference"]).exp()
    apart = mean / 3
    apart[4] = 18.0
    assert reference_index(apart, null["reference"], null["reference_sd"]).max() < bar / 3
    planted = mean.clone()
    planted[0] /= 8
    index = reference_index(planted, null["reference"], null["reference_sd"])
    assert index[0] > 3 * bar and index[1:].max() < bar
    # two classes: no other class to centre on, each against its own spread (floored at 0.25)
    two = reference_index([math.exp(-1.0), 1.0], [0.0, 0.0], [0.5, 0.1])
    assert torch.allclose(two, torch.tensor([math.exp(2.0), 1.0], dtype=torch.float64))


def test_the_lower_mad_statistic_refuses_models_too_few_classes_to_flag():
    # With 3 or 4 classes the lower-half MAD index of the smallest class is at most 1.35 (3
    # classes: exactly), so a 20x smaller trigger read "no backdoor found"; now one clear line.
    from poisonguard.detect.anomaly import log_lower_mad_index
    from poisonguard.errors import UserError

    assert float(log_lower_mad_index([1.0, 200.0, 210.0]).max()) == pytest.approx(2 / 1.4826, rel=1e-3)
    for sizes in ([10.0, 200.0, 190.0], [10.0, 200.0, 190.0, 180.0]):
        with pytest.raises(UserError, match="cannot flag a model of"):
            judge([_det(sizes)], statistic="lower_mad")
        assert judge([_det(sizes)], statistic="robust").targets == (0,)  # the default statistic flags it
    five = judge([_det([10.0, 200.0, 190.0, 180.0, 210.0])], statistic="lower_mad")
    assert five.targets == (0,)


def test_when_no_method_can_run_the_error_says_why_each_could_not():
    from torch import nn

    from poisonguard.data.dataset import ImageData
    from poisonguard.detect.verdict import run_detectors
    from poisonguard.errors import UserError

    rows = ImageData(torch.zeros(20, 4), torch.arange(20) % 2, ("a", "b"), kind="tabular")
    with pytest.raises(UserError, match=r"could run on this model and data \(neural_cleanse: an outlier test over "
                                        r"classes needs at least 3 classes.*; tabor: an outlier"):
        run_detectors(nn.Linear(4, 2), rows, ["neural_cleanse", "tabor"], on_skip=lambda name, exc: None)



def _stand_in_case(gen, *, target: int | None):
    """Four references of one architecture and a suspect of another, with a planted target 10x smaller.

    Measured on session 19's user architectures (benchmarks/results/issue-16-image-architectures-s19.json):
    a clean suspect's log NC sizes correlate 0.65-0.80 with the mnist_cnn references' mean, their
    difference spreading 0.3-0.7 across classes; here the suspect keeps the references' class
    effects plus its own per-class difference of spread 0.5.
    """
    from poisonguard.detect.calibration import Calibration

    effect = torch.tensor([4.0, 5.3, 3.8, 3.9, 4.5, 4.0, 4.3, 4.5, 4.3, 4.7], dtype=torch.float64)
    refs = _clean_sizes(gen, 4, effect, 0.15)
    suspect = (effect + 0.5 * torch.randn(10, generator=gen, dtype=torch.float64)).exp()
    if target is not None:
        suspect[target] = suspect[target] / 10
    cal = Calibration(key="k", architecture="mnist_cnn", source="a stand-in", n_models=4, clean_images=200,
                      seconds=1.0, methods={"neural_cleanse": fit_null(refs.tolist())})
    return _det(suspect.tolist()), cal


def test_stand_in_references_do_not_hide_the_suspects_own_smallest_class():
    # References of another architecture: their class offsets are only partly the suspect's, and
    # subtracting them spreads its other classes so that a 10x smaller target can stay under the
    # bar. The stand-in verdict also judges the suspect's own sizes and Neural Cleanse's smallest
    # gap, each test at a third of the rate (verdict.stand_in_rows). 40 synthetic pairs: 22 found by
    # the references alone, 26 with the own-sizes test at half the rate (session 19), 25 with the
    # gap too; clean suspects flagged 1, 3 and 2 times (the stated rate is 5%).
    from dataclasses import replace

    found_alone = found = flagged = 0
    hit = None
    for seed in range(40):
        gen = torch.Generator().manual_seed(seed)
        det, cal = _stand_in_case(gen, target=seed % 10)
        found_alone += judge([det], calibration=cal).targets == (seed % 10,)
        verdict = judge([det], calibration=replace(cal, stand_in=True))
        if verdict.targets == (seed % 10,):
            found, hit = found + 1, (verdict, seed % 10)
        clean_det, clean_cal = _stand_in_case(gen, target=None)
        flagged += judge([clean_det], calibration=replace(clean_cal, stand_in=True)).backdoored
    assert found >= found_alone + 2 and found >= 20 and flagged <= 6, (found_alone, found, flagged)

    verdict, target = hit
    row = next(e for e in verdict.evidence if e["class"] == target)
    assert row["threshold"] == 1.0 and row["flagged"] and row["statistic"] > 1
    assert all({"index", "threshold"} <= set(row[t]) for t in ("against_references", "own_sizes", "smallest_gap"))
    assert all(e["flagged"] == (e["statistic"] > e["threshold"]) for e in verdict.evidence)
    assert verdict.calibration["stand_in"] and "another architecture" in verdict.sentence


def test_a_stand_in_is_known_to_the_run_not_to_the_cached_calibration():
    # One architecture's references on one data set are one calibration, whatever suspect they
    # stand in for: the flag is set by calibrate_for and never written to the cache file.
    from dataclasses import replace

    from poisonguard.detect.calibration import Calibration, reference_architecture

    _, cal = _stand_in_case(torch.Generator().manual_seed(0), target=None)
    settings = {"n_models": 4, "classes": 10, "methods": ["neural_cleanse"]}
    cal = replace(cal, settings=settings, stand_in=True)
    assert "stand_in" not in cal.to_json()
    assert Calibration.from_json(cal.to_json(), key="k", settings=settings).stand_in is False
    assert reference_architecture(None, (1, 28, 28)).stand_in  # a graph file: the built-in stands in
    assert not reference_architecture({"architecture": "mnist_cnn"}, (1, 28, 28)).stand_in
    assert not reference_architecture(None, (7,)).stand_in  # tables: measured on images only


def test_a_stand_in_verdict_names_the_second_test_only_where_it_ran():
    # A two-class model is judged per class against the references: no second test, and the
    # sentence must not claim one (the review's reproducer).
    from dataclasses import replace

    from poisonguard.detect.calibration import Calibration

    refs = [[50.0, 80.0], [55.0, 85.0], [48.0, 90.0], [52.0, 82.0]]
    cal = Calibration(key="k", architecture="mnist_cnn", source="a stand-in", n_models=4, clean_images=200,
                      seconds=1.0, methods={"neural_cleanse": fit_null(refs, per_class=True)}, stand_in=True)
    verdict = judge([_det([50.0, 90.0])], calibration=cal)
    assert not any("own_sizes" in e for e in verdict.evidence) and "own trigger sizes" not in verdict.sentence
    det, ten = _stand_in_case(torch.Generator().manual_seed(0), target=3)
    assert "own trigger sizes" in judge([det], calibration=replace(ten, stand_in=True)).sentence


def test_the_second_stand_in_test_is_dropped_where_the_priors_flag_the_clean_references():
    # The priors were measured on MNIST. On data where every model finds one class far easier
    # (class 2 here, 12x), they flag every clean reference's own sizes, and the gap prior flags
    # every reference's smallest gap; the verdict then judges that method against the references
    # alone, and a clean suspect of that data stays clean. TABOR, on data without such a class,
    # keeps its own-sizes test; DeepInspect never has one (`OWN_SIZES_METHODS`).
    from poisonguard.detect.calibration import Calibration, loo_false_positives

    gen = torch.Generator().manual_seed(4)
    easy = torch.full((10,), 4.0, dtype=torch.float64)
    easy[2] = 1.5
    plain = torch.tensor([4.0, 5.3, 3.8, 3.9, 4.5, 4.0, 4.3, 4.5, 4.3, 4.7], dtype=torch.float64)
    nulls = {"neural_cleanse": fit_null(_clean_sizes(gen, 4, easy, 0.15).tolist()),
             "tabor": fit_null(_clean_sizes(gen, 4, plain, 0.15).tolist()),
             "deepinspect": fit_null(_clean_sizes(gen, 4, plain, 0.15).tolist())}
    cal = Calibration(key="k", architecture="mnist_cnn", source="a stand-in", n_models=4, clean_images=200,
                      seconds=1.0, methods=nulls, stand_in=True)
    suspect = _clean_sizes(gen, 1, easy, 0.15)[0].tolist()
    verdict = judge([_det(suspect), _det(_clean_sizes(gen, 1, plain, 0.15)[0].tolist(), method="tabor"),
                     _det(_clean_sizes(gen, 1, plain, 0.15)[0].tolist(), method="deepinspect")], calibration=cal)
    assert not verdict.backdoored
    assert not any("own_sizes" in e or "smallest_gap" in e for e in verdict.method_rows("neural_cleanse"))
    assert all("own_sizes" in e for e in verdict.method_rows("tabor"))
    assert not any("own_sizes" in e for e in verdict.method_rows("deepinspect"))
    assert ("TABOR is also judged on its own trigger sizes (uncalibrated priors), each of its 2 "
            "tests at half of the rate") in verdict.sentence
    assert "Neural Cleanse, DeepInspect (data-free): against the references alone" in verdict.sentence
    assert loo_false_positives(cal, 0.05)[0] == 0
