"""Randomized smoothing on models whose smoothed classifier has a closed form."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch import nn

from poisonguard.certify import RandomizedSmoothing, SmoothedClassifier
from poisonguard.certify import bounds

SHAPE = (1, 4, 4)


class Linear2(nn.Module):
    """Binary linear classifier on flattened (1, 4, 4) inputs: class 1 iff w.x + b > 0."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w = nn.Parameter(w.flatten().clone(), requires_grad=False)
        self.b = b

    def forward(self, x):
        s = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(s), s], dim=1)


def _linear_setup(margins, sigma):
    """A linear model and inputs x_i with signed margin (w.x_i + b)/||w|| = margins[i]."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(SHAPE, generator=gen)
    w_norm = float(w.norm())
    base = torch.full((1, *SHAPE), 0.5)
    b = -float((base.flatten() @ w.flatten()))
    x = torch.stack([base[0] + m * w / w_norm for m in margins])
    return Linear2(w, b), x


def test_closed_form_linear_radius_within_monte_carlo_confidence():
    """For f(x) = 1[w.x + b > 0], g's pA = Phi(margin / sigma) and the true radius is |margin|."""
    sigma, n, alpha = 0.5, 20_000, 0.001
    margins = [0.8, -0.4, 0.25, 1.2]
    model, x = _linear_setup(margins, sigma)
    pred, radii = SmoothedClassifier(model, sigma=sigma, seed=1, device="cpu").certify(x, 100, n, alpha)
    for m, p, r in zip(margins, pred.tolist(), radii.tolist()):
        p_true = norm.cdf(abs(m) / sigma)
        assert p == (1 if m > 0 else 0)
        # The certificate never exceeds the truth ...
        assert r <= abs(m) + 1e-9
        # ... and lies within the Monte Carlo confidence of it: the radius an all-knowing
        # bound would give at the (1 - alpha) lower quantile of the count.
        k_low = np.floor(n * p_true - 4 * math.sqrt(n * p_true * (1 - p_true)))
        r_low = sigma * norm.ppf(bounds.clopper_pearson_lower(k_low, n, alpha))
        assert r >= r_low - 1e-9


def test_abstains_on_the_decision_boundary():
    model, x = _linear_setup([0.0, 0.0], 0.25)
    pred, radii = SmoothedClassifier(model, sigma=0.25, seed=0, device="cpu").certify(x, 100, 2000, 0.001)
    assert pred.tolist() == [-1, -1] and radii.tolist() == [0.0, 0.0]
    assert SmoothedClassifier(model, sigma=0.25, seed=0, device="cpu").predict(x, 2000, 0.001).tolist() == [-1, -1]


def test_false_certification_rate_at_most_alpha():
    """Many independent certifications at a known pA: P(radius > true radius) <= alpha."""
    sigma, n, alpha, reps = 0.5, 100, 0.05, 3000
    p_true = 0.9
    margin = sigma * norm.ppf(p_true)
    model, x = _linear_setup([margin], sigma)
    pred, radii = SmoothedClassifier(model, sigma=sigma, seed=3, device="cpu", batch_size=8192).certify(
        x.expand(reps, *SHAPE), 20, n, alpha)
    false = ((pred == 1) & (radii > margin + 1e-12)) | ((pred == 0) & (radii > 0))
    rate = float(false.double().mean())
    assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / reps)
    assert float((pred == 1).double().mean()) > 0.5  # it does certify most of the time


def test_predict_wrong_class_rate_at_most_alpha():
    sigma, alpha, reps = 0.5, 0.05, 2000
    model, x = _linear_setup([sigma * norm.ppf(0.55)], sigma)  # g(x) = 1 with pA = 0.55
    out = SmoothedClassifier(model, sigma=sigma, seed=5, device="cpu", batch_size=8192).predict(
        x.expand(reps, *SHAPE), 100, alpha)
    assert float((out == 0).double().mean()) <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / reps)


def test_batched_equals_plain_reference_loop(clean_model, mnist):
    """Same seed, same noise stream: the batched certifier and Cohen's plain loop agree exactly."""
    from poisonguard.certify.reference import reference_certify

    x = mnist.test.x[:3]
    pred, radii = SmoothedClassifier(clean_model, sigma=0.25, seed=7, device="cpu", batch_size=1500).certify(x, 50, 600, 0.001)
    ref_pred, ref_radii = reference_certify(clean_model, x, range(3), sigma=0.25, n0=50, n=600, alpha=0.001, seed=7)
    assert pred.tolist() == ref_pred.tolist()
    assert radii.tolist() == ref_radii.tolist()


def test_same_seed_same_answer_and_chunking_does_not_matter():
    model, x = _linear_setup([0.1, 0.2, -0.15], 0.5)
    a = SmoothedClassifier(model, sigma=0.5, seed=11, device="cpu", batch_size=300).certify(x, 30, 500, 0.01)
    s = SmoothedClassifier(model, sigma=0.5, seed=11, device="cpu", batch_size=10_000)
    parts = [s.certify(x[i:i + 1], 30, 500, 0.01) for i in range(3)]  # continues the numbering
    assert torch.equal(a[0], torch.cat([p[0] for p in parts])) and torch.equal(a[1], torch.cat([p[1] for p in parts]))
    c = SmoothedClassifier(model, sigma=0.5, seed=12, device="cpu").certify(x, 30, 500, 0.01)
    assert not torch.equal(a[1], c[1])


def test_single_image_api():
    model, x = _linear_setup([0.6], 0.25)
    pred, radius = SmoothedClassifier(model, sigma=0.25, seed=0, device="cpu").certify(x[0], 50, 1000, 0.001)
    assert pred == 1 and 0 < radius <= 0.6


@pytest.mark.parametrize("kwargs, message", [
    ({"sigma": 0.0}, "sigma"), ({"sigma": -1.0}, "sigma"), ({"alpha": 0.0}, "alpha"), ({"alpha": 1.0}, "alpha"),
    ({"n0": 200, "n": 100}, "must not exceed"), ({"n": 9, "n0": 5}, "too small to ever certify"),
    ({"max_examples": 0}, "max examples"),
])
def test_bad_settings_are_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RandomizedSmoothing(**kwargs)


def test_method_summary_and_model_untouched(clean_model, mnist, copy_model):
    before = copy_model(clean_model)
    cert = RandomizedSmoothing(sigma=0.25, n0=32, n=200, alpha=0.01, max_examples=12, device="cpu").certify(
        clean_model, mnist.test)
    assert set(cert.certified_accuracy) == {"0.0", "0.25", "0.5", "0.75", "1.0"}
    assert len(cert.predictions) == len(cert.radii) == 12
    assert cert.certified_accuracy["0.0"] >= cert.certified_accuracy["0.25"] >= cert.certified_accuracy["1.0"]
    assert cert.certified_accuracy["1.0"] == 0.0  # beyond the largest radius n = 200 can certify
    assert 0 <= cert.abstain_rate <= 1 and cert.seconds_per_example > 0
    assert cert.to_dict()["sigma"] == 0.25
    for (k, a), b in zip(before.state_dict().items(), clean_model.state_dict().values()):
        assert torch.equal(a, b), k
    assert not clean_model.training


def test_gaussian_noise_layer_only_in_training():
    from poisonguard.certify.augment import GaussianNoise

    layer = GaussianNoise(0.5)
    x = torch.zeros(1000, 1, 2, 2)
    assert float(layer.train()(x).std()) == pytest.approx(0.5, rel=0.1)
    assert torch.equal(layer.eval()(x), x)
    # a table's raw features: sigma in each feature's std, the units certify smooths tables in
    rows = GaussianNoise(0.5, scale=torch.tensor([1.0, 100.0])).train()(torch.zeros(4000, 2))
    assert rows.std(0).tolist() == pytest.approx([0.5, 50.0], rel=0.1)
