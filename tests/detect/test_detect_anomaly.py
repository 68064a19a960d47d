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
