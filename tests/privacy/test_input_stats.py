"""Private input statistics for models that scale their own inputs (the tables' mlp)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from poisonguard.data import ImageData
from poisonguard.models import build_model
from poisonguard.privacy import DPSGD, GradientShaping
from poisonguard.privacy.input_stats import private_scaling
from poisonguard.train import unfitted_scalers


def _table(n: int, seed: int) -> torch.Tensor:
    """Columns in very different units: income, age, a common and a rare 0/1 flag, a small ratio."""
    rng = np.random.default_rng(seed)
    return torch.tensor(np.stack([rng.normal(50_000, 20_000, n), rng.normal(30, 7, n),
                                  rng.random(n) < 0.3, rng.random(n) < 0.03, rng.normal(0.2, 0.05, n)], 1),
                        dtype=torch.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_private_scaling_finds_each_features_scale(seed):
    x = _table(4000, seed)
    centre, scale, resolved = private_scaling(x, epsilon=0.3, delta=1e-6, generator=torch.Generator().manual_seed(seed))
    assert resolved.all()
    for j, sigma in ((0, 20_000), (1, 7), (4, 0.05)):
        true_median = float(x[:, j].median())
        assert abs(float(centre[j]) - true_median) < 0.35 * sigma, (j, centre[j], true_median)
        assert 0.6 < float(scale[j]) / sigma < 1.6, (j, scale[j], sigma)
    assert 0.4 < float(scale[2]) < 1.5  # quartiles 0 and 1: about the 0/1 column's spread
    assert float(scale[3]) == 1.0  # quartiles share a bin: unit scale, not a sliver


def test_a_table_too_small_for_the_noise_is_left_unscaled_not_scaled_by_grid_ends():
    """455 rows of 18 features at epsilon 0.3: every bin fell under the noise floor, and the
    quartiles became grid ends (a centre of 1.6e8); the model ended at the majority class."""
    x = torch.tensor(np.random.default_rng(0).normal(500, 100, size=(455, 18)), dtype=torch.float32)
    centre, scale, resolved = private_scaling(x, epsilon=0.3, delta=1e-6, generator=torch.Generator().manual_seed(0))
    assert not resolved.any()  # a bin of pure noise at the floor (225) would weigh half the rows
    assert torch.equal(centre, torch.zeros(18)) and torch.equal(scale, torch.ones(18))


def _income_task(n: int, seed: int) -> ImageData:
    x = _table(n, seed)
    y = ((x[:, 0] - 50_000) / 20_000 + (x[:, 1] - 30) / 7 > 0.8).long()  # a minority of ~29%
    return ImageData(x, y, ("low", "high"), kind="tabular")


def test_dp_sgd_learns_a_table_in_raw_units_and_counts_the_statistics():
    train, test = _income_task(3000, 0), _income_task(1000, 1)
    model = build_model("mlp", num_classes=2, input_shape=(5,), seed=0)
    trained, privacy = DPSGD(epsilon=3, delta=1e-5, epochs=5, batch_size=256, seed=0, device="cpu").fit(model, train)
    with torch.no_grad():
        acc = float((trained(test.x).argmax(1) == test.y).float().mean())
    majority = max(float(test.y.float().mean()), 1 - float(test.y.float().mean()))
    assert acc > majority + 0.1, (acc, majority)
    stats = privacy.extra["input_statistics"]
    assert stats["epsilon"] == pytest.approx(0.3) and stats["delta"] == pytest.approx(1e-6)
    assert stats["unresolved_features"] == 0
    assert privacy.extra["dp_sgd_epsilon"] <= 2.7 + 1e-6
    assert privacy.epsilon == pytest.approx(privacy.extra["dp_sgd_epsilon"] + 0.3)
    assert privacy.epsilon <= 3 + 1e-6
    assert unfitted_scalers(model), "the caller's model is left unfitted"
    assert not unfitted_scalers(trained)


def test_an_image_model_spends_nothing_on_statistics(mnist):
    small = mnist.train.subset(np.arange(128))
    model = build_model("mnist_cnn", num_classes=10, input_shape=(1, 28, 28), seed=0)
    _, privacy = DPSGD(epsilon=8, delta=1e-4, epochs=1, batch_size=64, accountant="rdp", device="cpu").fit(model, small)
    assert "input_statistics" not in privacy.extra


def test_gradient_shaping_fits_the_statistics_exactly():
    train = _income_task(600, 0)
    model = build_model("mlp", num_classes=2, input_shape=(5,), seed=0)
    trained, _ = GradientShaping(noise_multiplier=0.5, epochs=1, batch_size=64, device="cpu").fit(model, train)
    scaler = trained[0][0]
    assert torch.allclose(scaler.mean, train.x.mean(0), rtol=1e-4)
