"""Each aggregation rule against a hand computation, plus the bad-input contract."""

from __future__ import annotations

import math

import pytest
import torch

from poisonguard.federated import aggregators as A
from poisonguard.federated.aggregators import Aggregator, pairwise_sq_distances


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_registry_lists_every_rule():
    assert set(A.aggregator_names()) == {"fedavg", "median", "trimmed_mean", "krum", "multi_krum", "bulyan",
                                         "geometric_median", "centered_clipping", "norm_bound", "fltrust", "flame"}


def test_fedavg_weighted():
    out = A.fedavg(t([[1, 2], [3, 4], [5, 6]]), torch.tensor([1.0, 1.0, 2.0]))
    assert torch.allclose(out, t([3.5, 4.5]))  # (1 + 3 + 2*5) / 4, (2 + 4 + 2*6) / 4


def test_median_odd_and_even():
    assert torch.allclose(A.median(t([[1, 9], [5, 0], [2, 4]])), t([2, 4]))
    assert torch.allclose(A.median(t([[1], [2], [10], [4]])), t([3]))  # (2 + 4) / 2


@pytest.mark.parametrize("numpy_path", [True, False], ids=["cpu-numpy", "torch"])
@pytest.mark.parametrize("n", [7, 8])
def test_order_statistics_equal_a_full_sort_on_both_paths(monkeypatch, numpy_path, n):
    from poisonguard.federated.aggregators import order_stats

    monkeypatch.setattr(order_stats, "runs_on_numpy", lambda x: numpy_path)
    g = torch.Generator().manual_seed(n)
    ties = torch.randint(0, 4, (n, 300), generator=g).float()  # many equal values per coordinate
    s = ties.sort(0).values
    median = s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
    assert torch.equal(order_stats.coordinate_median(ties), median)
    assert torch.allclose(order_stats.coordinate_trimmed_mean(ties, 2), s[2:n - 2].mean(0))
    # Bulyan's stage: the mean of the beta values nearest the median (continuous data: no
    # ties in distance, so the nearest set is unique).
    x = torch.randn(n, 300, generator=g)
    med = order_stats.coordinate_median(x)
    nearest = (x - med).abs().argsort(0)[: n - 3]
    assert torch.allclose(order_stats.mean_closest_to_median(x, n - 3), x.gather(0, nearest).mean(0), atol=1e-6)


def test_trimmed_mean():
    out = A.trimmed_mean(t([[1, -50], [2, 0], [3, 1], [100, 2]]), f=1)
    assert torch.allclose(out, t([2.5, 0.5]))


def test_pairwise_distances_match_cdist():
    x = torch.randn(7, 1000, generator=torch.Generator().manual_seed(0))
    ref = torch.cdist(x.double(), x.double()).pow(2).float()
    assert torch.allclose(pairwise_sq_distances(x), ref, rtol=1e-4, atol=1e-3)
    shifted = x + 50  # whole models sharing large weights: centring keeps the precision
    assert torch.allclose(pairwise_sq_distances(shifted, centre=True), ref, rtol=1e-4, atol=1e-2)
    # float64 (scipy's dsyrk) and a non-contiguous view take the same path to the same answer.
    assert torch.allclose(pairwise_sq_distances(x.double()), torch.cdist(x.double(), x.double()).pow(2), rtol=1e-9,
                          atol=1e-8)
    wide = torch.randn(1000, 7, generator=torch.Generator().manual_seed(1)).T
    assert torch.allclose(pairwise_sq_distances(wide), torch.cdist(wide.double(), wide.double()).pow(2).float(),
                          rtol=1e-4, atol=1e-3)


def test_krum_and_multi_krum():
    x = t([[0], [1], [2], [4], [100]])
    # n - f - 2 = 2 nearest: scores 0:1+4=5, 1:1+1=2, 2:1+4=5, 4:4+9=13, 100: huge
    info = {}
    assert torch.allclose(A.krum(x, f=1, info=info), t([1]))
    assert info["selected"] == [1] and info["scores"][:4] == pytest.approx([5.0, 2.0, 5.0, 13.0], rel=1e-4)
    assert torch.allclose(A.multi_krum(x, f=1, m=3), t([1]))  # mean of 0, 1, 2


def test_bulyan():
    # Five clustered clients first (Krum ties resolve to the lowest index), two far outliers.
    x = t([[0.5, 1], [1.5, 0], [2, 3], [4, 2], [10, 7], [100, 100], [-100, 100]])
    info = {}
    out = A.bulyan(x, f=1, info=info)
    assert info["selected"] == [0, 1, 2, 3, 4]  # theta = n - 2f = 5
    # beta = 3 values closest to the median per coordinate: {0.5, 1.5, 2} and {1, 2, 3}
    assert torch.allclose(out, t([4 / 3, 2]))


def test_geometric_median():
    assert torch.allclose(A.geometric_median(t([[0], [1], [10]])), t([1]), atol=1e-3)
    assert torch.allclose(A.geometric_median(t([[0], [1], [10]]), torch.tensor([1.0, 1.0, 5.0])), t([10]), atol=1e-3)
    square = t([[0, 0], [2, 0], [0, 2], [2, 2]])
    assert torch.allclose(A.geometric_median(square), t([1, 1]), atol=1e-4)


def test_centered_clipping_and_norm_bound():
    x = t([[3, 4], [0, 0.5]])  # norm 5 -> clipped to [0.6, 0.8]
    assert torch.allclose(A.centered_clipping(x, tau=1.0), t([0.3, 0.65]))
    assert torch.allclose(A.norm_bound(x, max_norm=1.0, sigma=0.0), t([0.3, 0.65]))


def test_centered_clipping_moves_from_center():
    # From centre [1, 0]: x1 - v = [3, 0] -> clipped to [1, 0]; x2 - v = [0, 0.5] stays.
    out = A.centered_clipping(t([[4, 0], [1, 0.5]]), tau=1.0, center=t([1, 0]))
    assert torch.allclose(out, t([1.5, 0.25]))


def test_norm_bound_noise_is_seeded():
    x = t([[1, 0], [0, 1]])
    a = A.norm_bound(x, max_norm=1.0, sigma=0.1, generator=torch.Generator().manual_seed(3))
    b = A.norm_bound(x, max_norm=1.0, sigma=0.1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.allclose(a, t([0.5, 0.5]))


def test_fltrust():
    x = t([[2, 0], [0, 3], [-1, 0], [1, 1]])
    info = {}
    out = A.fltrust(x, root_update=t([1, 0]), info=info)
    c = 1 / math.sqrt(2)
    assert info["trust"] == pytest.approx([1, 0, 0, c], abs=1e-6)
    # (1 * [1, 0] + c * [c, c]) / (1 + c)
    assert torch.allclose(out, t([1.5 / (1 + c), 0.5 / (1 + c)]))
    with pytest.raises(ValueError, match="root"):
        A.fltrust(x)


def test_flame_filters_clips_and_averages():
    benign = t([[1, 0], [1, 0.1], [0.9, 0], [1, -0.1], [1.1, 0], [1, 0.05]])
    bad = t([[-10, 0], [-10, 1]])
    x = torch.cat([benign, bad])
    info = {}
    out = A.flame(x, noise_lambda=0.0, info=info)
    admitted = info["selected"]
    # HDBSCAN(min_cluster_size = 5) keeps a majority cluster of benign clients and drops both
    # attackers (it may also call a border benign point noise, as the paper's filter does).
    assert set(admitted) <= set(range(6)) and len(admitted) >= 5
    norms = x.norm(dim=1).sort().values
    s = (norms[3] + norms[4]) / 2  # median of the 8 norms
    clipped = x[admitted] * (s / x[admitted].norm(dim=1, keepdim=True)).clamp(max=1)
    assert torch.allclose(out, clipped.mean(0))
    assert info["clip_norm"] == pytest.approx(float(s))


def test_nnm():
    out = A.nnm(t([[0], [1], [10]]), f=1)
    assert torch.allclose(out, t([[0.5], [0.5], [5.5]]))


def test_nnm_composes_with_any_rule():
    x = t([[0], [1], [2], [4], [100]])
    assert torch.allclose(Aggregator("nnm+median", f=1)(x).update, A.median(A.nnm(x, f=1)))


def test_bounds_are_named():
    with pytest.raises(ValueError, match=r"n > 2f \+ 2"):
        A.krum(torch.zeros(4, 3), f=1)
    with pytest.raises(ValueError, match=r"n >= 4f \+ 3"):
        Aggregator("bulyan", f=1)(torch.zeros(6, 3))
    with pytest.raises(ValueError, match=r"n > 2f"):
        A.trimmed_mean(torch.zeros(4, 3), f=2)


def test_nonfinite_updates_are_excluded_and_reported():
    x = t([[1, 1], [float("nan"), 0], [3, 3], [float("inf"), 1]])
    res = Aggregator("fedavg")(x)
    assert res.excluded == (1, 3)
    assert torch.allclose(res.update, t([2, 2]))
    with pytest.raises(ValueError, match="NaN or Inf"):
        Aggregator("median")(torch.full((2, 2), float("nan")))


def test_selected_indices_refer_to_original_clients():
    x = t([[0], [float("nan")], [1], [2], [4], [100]])
    res = Aggregator("krum", f=1)(x)
    assert res.excluded == (1,) and res.info["selected"] == [2]


def test_mismatched_shapes_and_bad_hyperparameters():
    with pytest.raises(ValueError, match="mismatched shapes"):
        Aggregator("fedavg")([torch.zeros(3), torch.zeros(4)])
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        Aggregator("median", beta=0.1)
    with pytest.raises(ValueError, match="weights"):
        Aggregator("fedavg")(torch.zeros(3, 2), torch.ones(2))
    with pytest.raises(ValueError, match="f"):
        Aggregator("krum", f=-1)


@pytest.mark.parametrize("name", A.aggregator_names())
def test_every_rule_is_exact_on_identical_updates(name):
    # Conformance: when every client sends the same update, every rule returns it.
    x = torch.tensor([0.5, -1.0, 2.0]).expand(9, 3).clone()
    agg = Aggregator(name, f=1, **({"sigma": 0.0} if name == "norm_bound" else {}),
                     **({"noise_lambda": 0.0} if name == "flame" else {}))
    out = agg(x, root_update=x[0]).update
    if name == "centered_clipping":  # one clipping step from the zero centre moves at most tau
        out = Aggregator(name, f=1, iters=50)(x).update
    assert torch.allclose(out, x[0], atol=1e-4), name
