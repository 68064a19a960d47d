"""The outlier tests against hand-computed answers."""

import math

import pytest
import torch

from poisonguard.detect.anomaly import dmad_anomaly_index, flag_small, mad_anomaly_index


def test_mad_index_matches_hand_computation():
    values = [10.0, 12.0, 11.0, 9.0, 13.0, 2.0]
    # median 10.5; |dev| = .5 1.5 .5 1.5 2.5 8.5 -> median 1.5; MAD = 1.4826 * 1.5
    index = mad_anomaly_index(values)
    assert index[5].item() == pytest.approx(8.5 / (1.4826 * 1.5))
    assert index[0].item() == pytest.approx(0.5 / (1.4826 * 1.5))
    assert flag_small(values, index) == [5]


def test_large_outlier_is_not_flagged():
    values = [10.0, 12.0, 11.0, 9.0, 13.0, 60.0]
    index = mad_anomaly_index(values)
    assert index[5] > 2
    assert flag_small(values, index) == []


def test_equal_values_give_zero_index():
    assert torch.equal(mad_anomaly_index([3.0] * 5), torch.zeros(5, dtype=torch.float64))


def test_dmad_uses_lower_half_only():
    values = [10.0, 11.0, 12.0, 13.0, 100.0, 200.0, 1.0]
    # median 12; lower half {10, 11, 12, 1}: |dev| 2 1 0 11 -> median 1.5
    index = dmad_anomaly_index(values)
    assert index[6].item() == pytest.approx(11 / (1.4826 * 1.5))
    assert index[5].item() == 0 and index[4].item() == 0
    assert flag_small(values, index) == [6]


@pytest.mark.parametrize("bad", [[1.0, 2.0], [1.0, math.nan, 2.0]])
def test_bad_values_raise(bad):
    with pytest.raises(ValueError):
        mad_anomaly_index(bad)


def test_trimmed_loo_index_matches_hand_computation():
    from poisonguard.detect.anomaly import trimmed_loo_index

    sizes = [40.0, 50.0, 45.0, 60.0, 55.0, 5.0]
    logs = [math.log(v) for v in sizes]
    index = trimmed_loo_index(sizes, signed=True)
    for k in range(len(sizes)):
        others = sorted(v for i, v in enumerate(logs) if i != k)[1:]  # the smallest other class left out
        mean = sum(others) / len(others)
        sd = math.sqrt(sum((v - mean) ** 2 for v in others) / (len(others) - 1))
        assert index[k].item() == pytest.approx((mean - logs[k]) / sd, rel=1e-9)
    assert int(index.argmax()) == 5 and index[5] > 10


def test_trimmed_loo_index_is_scale_free_and_sees_two_targets():
    from poisonguard.detect.anomaly import trimmed_loo_index

    gen = torch.Generator().manual_seed(0)
    sizes = (4.0 + 0.2 * torch.randn(10, generator=gen, dtype=torch.float64)).exp()
    sizes[[2, 7]] /= 8  # two classes with triggers 8x smaller than the rest
    index = trimmed_loo_index(sizes)
    assert torch.allclose(index, trimmed_loo_index(sizes * 3.7))
    # Each target is judged without the other: both stand out (an untrimmed sd of the 9 others
    # would hold the second target and shrink both to about 2).
    assert set(index.topk(2).indices.tolist()) == {2, 7} and float(index[[2, 7]].min()) > 4


def test_trimmed_loo_index_finds_a_target_the_lower_mad_misses():
    # The reason for the default (notes/issue-16.md, session 6): ten iid normal classes, one
    # target 5 spreads below; each statistic judged at its own simulated 98.3% quantile (5%
    # over three methods). Simulation measured 56% found against 22% for the lower-half MAD.
    from poisonguard.detect.anomaly import INDEX_ROWS

    gen = torch.Generator().manual_seed(2)
    null = torch.randn(8000, 10, generator=gen, dtype=torch.float64)
    planted = torch.randn(4000, 10, generator=gen, dtype=torch.float64)
    planted[:, 0] -= 5
    found = {}
    for name, rows in INDEX_ROWS.items():
        threshold = rows(null).amax(1).quantile(1 - 0.05 / 3)
        index = rows(planted)
        found[name] = float(((index[:, 0] > threshold) & (index.argmax(1) == 0)).double().mean())
    assert found["robust"] > 0.45 and found["robust"] > 2 * found["lower_mad"], found
