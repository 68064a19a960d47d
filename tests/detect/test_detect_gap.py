"""The smallest trigger's gap (detect/gap.py): known answers, a calibrated null, and the stand-in verdict's use of it."""

import math
from dataclasses import replace
from unittest import mock

import pytest
import torch

from poisonguard.detect import gap
from poisonguard.detect.calibration import Calibration, fit_null
from poisonguard.detect.verdict import judge
from poisonguard.results import Detection


def _det(sizes) -> Detection:
    k = len(sizes)
    return Detection(method="neural_cleanse", backdoored=False, flagged_classes=(), anomaly_index=(0.0,) * k,
                     seconds=0.0, mask_l1=tuple(float(s) for s in sizes), threshold=2.0, extra={"targets": list(range(k))})


def test_the_gap_is_positive_for_the_smallest_class_only():
    g = gap.gap_index([4.0, 1.0, 8.0, 2.0])
    assert abs(float(g[1]) - math.log(2.0)) < 1e-12  # smallest: log(second smallest / smallest)
    assert abs(float(g[3]) - math.log(0.5)) < 1e-12  # any other class: below zero
    assert (g[[0, 2, 3]] < 0).all()
    assert gap.gap_p_values(g, {"mean": 0.2, "n": 10})[0] == 1.0


def test_the_gap_test_keeps_its_rate_on_clean_models_spread_like_the_stand_in():
    # Clean suspects and references whose log sizes spread across classes as the MNIST stand-in's
    # do (sd 0.46, iid): the smallest class's gap p-value, under the law updated with four
    # references and the suspect's own spacings, falls under the level no more often than stated.
    # (Where a suspect's low classes spread far wider, sd 0.8 iid, the rate is several times the
    # level: results/issue-16.md, session 20, states it.)
    gen = torch.Generator().manual_seed(0)
    level, hits, draws = 0.02, 0, 1500
    for _ in range(draws):
        refs = (4 + 0.46 * torch.randn(4, 10, generator=gen, dtype=torch.float64)).exp().tolist()
        sizes = (4 + 0.46 * torch.randn(10, generator=gen, dtype=torch.float64)).exp()
        law = gap.gap_null("neural_cleanse", refs, sizes)
        hits += gap.gap_p_values(gap.gap_index(sizes), law)[int(sizes.argmin())] <= level
    assert hits / draws <= 1.5 * level, hits
    law = gap.gap_null("neural_cleanse")
    threshold = gap.gap_threshold(law, level)
    assert abs(gap.gap_p_values(torch.tensor([threshold], dtype=torch.float64), law)[0] - level) < 1e-9


def test_the_leave_one_out_check_counts_what_the_gap_test_would_flag():
    # References with tight low ends, one of them 1.7x below its next class: judged against the
    # others and its own spacings the gap test would flag it, so it is not used, and the
    # calibration's leave-one-out check (which assumes the extra tests pass every reference) holds.
    from poisonguard.detect.calibration import loo_false_positives
    from poisonguard.detect.verdict import method_bars, stand_in_tests

    gen = torch.Generator().manual_seed(3)
    base = [10.0, 10.3, 10.7, 11.0, 11.4, 12.0, 30.0, 40.0, 50.0, 60.0]
    refs = [[v * float(1 + 0.01 * torch.randn(1, generator=gen)) for v in base] for _ in range(8)]
    refs[0][0] = refs[0][1] / 1.7
    cal = Calibration(key="k", architecture="mnist_cnn", source="a stand-in", n_models=8, clean_images=200,
                      seconds=1.0, methods={"neural_cleanse": fit_null(refs)}, stand_in=True)
    _, cut, bars = method_bars(["neural_cleanse"], 0.05)
    assert "smallest_gap" not in stand_in_tests("neural_cleanse", cal.methods["neural_cleanse"], cut, bars[0], "robust")
    refs[0][0] = refs[0][1] / 1.02  # no reference stands out: the gap test is used
    kept = fit_null(refs)
    assert "smallest_gap" in stand_in_tests("neural_cleanse", kept, cut, bars[0], "robust")
    assert loo_false_positives(replace(cal, methods={"neural_cleanse": kept}), 0.05)[0] == 0


def test_references_with_a_wide_gap_widen_the_null():
    # Every clean reference's smallest class is 3x below the next: the updated null then no
    # longer calls a 3x gap unusual, as the prior alone would.
    refs = [[3.0, 9.0, 10.0, 11.0, 12.0], [3.3, 9.5, 10.0, 12.0, 11.0]]
    prior, updated = gap.gap_null("neural_cleanse"), gap.gap_null("neural_cleanse", refs)
    assert updated["n"] == prior["n"] + 2 and updated["mean"] > 1.5 * prior["mean"]
    suspect = gap.gap_index([3.0, 9.0, 10.0, 11.0, 12.0])
    assert gap.gap_p_values(suspect, prior)[0] < 0.01 < gap.gap_p_values(suspect, updated)[0]
    assert gap.gap_null("deepinspect") is None  # no measured prior, no gap test


def _wide_case(gen, target):
    """Stand-in references (MNIST-like class effects) and a suspect of another architecture whose
    own class sizes spread widely (sd 0.7 in log), so neither the references nor its own spread
    single out a target 4x below its smallest other class."""
    effect = torch.tensor([4.0, 5.3, 3.8, 3.9, 4.5, 4.0, 4.3, 4.5, 4.3, 4.7], dtype=torch.float64)
    refs = (effect + 0.15 * torch.randn(4, 10, generator=gen, dtype=torch.float64)).exp()
    logs = 4.0 + 0.7 * torch.randn(10, generator=gen, dtype=torch.float64)
    if target is not None:
        logs[target] = logs.min() - math.log(4.0)
    cal = Calibration(key="k", architecture="mnist_cnn", source="a stand-in", n_models=4, clean_images=200,
                      seconds=1.0, methods={"neural_cleanse": fit_null(refs.tolist())}, stand_in=True)
    return _det(logs.exp().tolist()), cal


def test_a_stand_in_verdict_finds_a_target_far_below_the_rest_through_the_gap():
    # A hard case for every test (iid class sizes spread wider than any measured architecture's
    # low end): session 19's two tests found 14/30 and flagged 4/30 clean suspects; with the gap,
    # whose null widens with the suspect's own spacings, 20/30 and 4/30.
    found = found_before = flagged = flagged_before = 0
    for seed in range(30):
        gen = torch.Generator().manual_seed(seed)
        det, cal = _wide_case(gen, target=seed % 10)
        clean, clean_cal = _wide_case(gen, target=None)
        verdict = judge([det], calibration=cal)
        found += verdict.targets == (seed % 10,)
        flagged += judge([clean], calibration=clean_cal).backdoored
        with mock.patch.dict(gap.PRIORS, clear=True):  # session 19's two tests
            found_before += judge([det], calibration=cal).targets == (seed % 10,)
            flagged_before += judge([clean], calibration=clean_cal).backdoored
    assert found >= found_before + 3 and flagged <= flagged_before + 1, (found_before, found, flagged_before, flagged)
    row = next(e for e in verdict.evidence if e["class"] == 9)
    assert row["smallest_gap"]["index"] > 0 and row["smallest_gap"]["threshold"] > 0


def test_the_suspects_own_low_spacings_widen_its_null():
    # Two suspects with the same smallest gap (4x); one's other low classes sit close together,
    # the other's spread 2x apart: only the first gap is unusual for its own model.
    tight = [1.0, 4.0, 4.2, 4.4, 4.6, 9.0, 12.0]
    spread = [1.0, 4.0, 8.0, 16.0, 32.0, 64.0, 99.0]
    p_tight, p_spread = (gap.gap_p_values(gap.gap_index(s), gap.gap_null("neural_cleanse", (), s))[0]
                         for s in (tight, spread))
    assert p_tight < 0.005 and p_spread > 20 * p_tight
    assert gap.own_spacings(tight) == pytest.approx([2 * math.log(4.2 / 4.0), 3 * math.log(4.4 / 4.2),
                                                     4 * math.log(4.6 / 4.4)])
