"""Combining the methods' p-values per class (detect/combine.py): its false-positive rate, and the
evidence of two methods that each see part of a trigger."""

from __future__ import annotations

import numpy as np
import torch

from poisonguard.detect import combine
from poisonguard.detect.anomaly import robust_index
from poisonguard.detect.calibration import fit_null
from poisonguard.detect.verdict import class_p_values, index_threshold, judge
from poisonguard.results import Detection


def test_level_keeps_the_false_positive_rate_of_independent_methods():
    # Fresh uniform p-values (another generator than the null's): the share of clean "models"
    # whose combined statistic passes the cut is the stated rate, for 1 to 4 methods.
    rng = np.random.default_rng(7)
    for m in (1, 2, 3, 4):
        cut = combine.level(0.05, m)
        rate = float((combine.statistic(rng.uniform(size=(40_000, m))) <= cut).mean())
        assert abs(rate - 0.05) < 0.006, (m, rate)
        # One method alone passes at m * p <= cut: stricter than no correction, looser than Fisher alone.
        assert 0.05 / m <= cut <= 0.05
    assert combine.level(0.05, 1) == 0.05


def test_statistic_adds_agreeing_evidence_and_keeps_one_strong_finding():
    m = 3
    cut = combine.level(0.05, m)
    two_moderate = np.array([0.02, 0.02, 0.9])  # each above the single-method bar cut / 3
    assert (two_moderate[:2] > cut / m).all() and combine.statistic(two_moderate) <= cut
    one_strong = np.array([0.001, 0.9, 0.9])  # one method sure, the others see nothing
    assert combine.statistic(one_strong) <= cut
    nothing = np.array([0.2, 0.3, 0.5])
    assert combine.statistic(nothing) > cut
    # Monotone: a larger p-value never makes a class more suspicious.
    assert combine.statistic(np.array([0.02, 0.03, 0.9])) >= combine.statistic(two_moderate)
    # T <= Fisher's p, which is uniform, so P(T <= t) >= t: the model p-value is never below T itself.
    t = float(combine.statistic(nothing))
    assert t <= combine.p_value(t, m) <= 1.5 * t


def _clean_sizes(gen, n, k=10):
    return (4.0 + 0.2 * torch.randn(n, 1, generator=gen, dtype=torch.float64)
            + 0.25 * torch.randn(n, k, generator=gen, dtype=torch.float64)).exp()


def _det(method, sizes):
    return Detection(method=method, backdoored=False, flagged_classes=(), anomaly_index=(0.0,) * len(sizes),
                     seconds=0.0, mask_l1=tuple(float(s) for s in sizes), threshold=2.0,
                     extra={"targets": list(range(len(sizes)))})


class _Cal:
    def __init__(self, nulls):
        self.nulls = nulls

    def null_for(self, method):
        return self.nulls[method]

    def summary(self):
        return {"calibrated": True}


def _shrink_to_p(null, sizes, cls, p_target):
    """Shrink class `cls` until its calibrated p-value falls to about `p_target`."""
    sizes = sizes.clone()
    for _ in range(200):
        index = robust_index("robust", sizes, torch.tensor(null["reference"], dtype=torch.float64))
        if class_p_values(index, null)[cls] <= p_target:
            return sizes
        sizes[cls] *= 0.97
    raise AssertionError("could not reach the p-value")


def test_two_methods_that_each_fall_short_flag_the_class_together():
    gen = torch.Generator().manual_seed(5)
    methods = ("neural_cleanse", "feature_re", "deepinspect")
    nulls = {m: fit_null(_clean_sizes(gen, 4).tolist()) for m in methods}
    cal = _Cal(nulls)
    cut = combine.level(0.05, 3)
    suspect = {m: _clean_sizes(gen, 1)[0] for m in methods}
    # Class 4 is made smaller under two methods, each to p ~ 0.02: above one method's bar (cut / 3 ~ 0.012).
    for m in methods[:2]:
        suspect[m] = _shrink_to_p(nulls[m], suspect[m], 4, 0.02)
    v = judge([_det(m, suspect[m]) for m in methods], calibration=cal)
    rows = [e for e in v.evidence if e["class"] == 4]
    assert v.backdoored and 4 in v.targets
    assert not any(e["flagged"] for e in rows)  # no chart shows the class over its own threshold...
    assert v.combination["statistic"]["4"] <= v.combination["cut"] == round(cut, 8)  # ...the combination does
    assert any("together they do" in note and "Class 4" in note for note in v.disagreements)
    for e in v.evidence:  # every chart's threshold is the single-method bar at the cut
        assert abs(e["threshold"] - index_threshold(nulls[e["method"]], cut, 3)) < 1e-5
    # The same suspect with only one method shrunk: not enough.
    one = {m: (suspect[m] if m == methods[0] else _clean_sizes(gen, 1)[0]) for m in methods}
    w = judge([_det(m, one[m]) for m in methods], calibration=cal)
    assert 4 not in w.targets


def test_methods_of_one_family_are_not_counted_twice():
    # TABOR shares Neural Cleanse's engine: two moderate p-values from them are one finding,
    # not two, so Fisher must not add them (their best p enters, Bonferroni over the two).
    from poisonguard.detect.verdict import method_families

    assert method_families(["neural_cleanse", "tabor", "feature-re"]) == ["pixel_mask", "pixel_mask", "feature_re"]
    gen = torch.Generator().manual_seed(11)
    nulls = {m: fit_null(_clean_sizes(gen, 4).tolist()) for m in ("neural_cleanse", "tabor", "feature_re")}
    base = _clean_sizes(gen, 1)[0]
    shrunk = {m: _shrink_to_p(nulls[m], base, 6, 0.035) for m in nulls}
    same_family = judge([_det(m, shrunk[m]) for m in ("neural_cleanse", "tabor")], calibration=_Cal(nulls))
    p6 = [e["p_value"] for e in same_family.evidence if e["class"] == 6]
    assert 2 * min(p6) > 0.05 and max(p6) < 0.05  # each moderate; their best, doubled, short of 5%
    assert 6 not in same_family.targets and same_family.combination["cut"] == 0.05  # one family: T = 2 x min p
    two_families = judge([_det(m, shrunk[m]) for m in ("neural_cleanse", "feature_re")], calibration=_Cal(nulls))
    assert 6 in two_families.targets
