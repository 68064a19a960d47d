"""Every sample's gradient is clipped to norm C before noise, in every grad-sample mode."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from poisonguard.privacy import GradientShaping
from poisonguard.privacy.engine import train_private
from privacy_helpers import tiny_net


@pytest.fixture(scope="module")
def batch(mnist):
    return mnist.train.subset(np.arange(48))


def _reference_clipped_mean(model, data, c):
    """Per-sample gradients by torch.func (independent of Opacus), each clipped to norm c, averaged."""
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, x, y):
        return F.cross_entropy(functional_call(model, p, (x[None],)), y[None])

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, data.x, data.y)
    flat = torch.cat([g.reshape(len(data), -1) for g in per_sample.values()], dim=1)
    norms = flat.norm(dim=1)
    factor = (c / (norms + 1e-6)).clamp(max=1.0)
    return {k: torch.einsum("i,i...->...", factor, g) / len(data) for k, g in per_sample.items()}, norms


@pytest.mark.parametrize("mode", ["ghost", "hooks", "functorch"])
def test_step_gradient_is_the_mean_of_per_sample_gradients_clipped_to_c(batch, mode):
    c = 0.05
    model = tiny_net()
    expected, raw_norms = _reference_clipped_mean(copy.deepcopy(model), batch, c)
    assert (raw_norms > c).float().mean() > 0.9  # the bound really bites
    seen = {}

    def hook(private, dp_opt):
        inner = dp_opt.original_optimizer.step

        def record(*a, **k):  # the update the optimiser is about to apply (noise is 0 here)
            seen["grads"] = {n: p.grad.detach().clone() for n, p in private.named_parameters()}
            return inner(*a, **k)

        dp_opt.original_optimizer.step = record

    # One full-batch step, no noise: p.grad must be sum_i clip_C(g_i) / N.
    GradientShaping(noise_multiplier=0.0, max_grad_norm=c, epochs=1, batch_size=len(batch), grad_sample_mode=mode,
                    device="cpu").fit(model, batch, on_private=hook)
    for name, ref in expected.items():
        got = seen["grads"][name.removeprefix("_module.")] if name in seen["grads"] else seen["grads"]["_module." + name]
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-7)


def test_each_clipped_per_sample_gradient_opacus_accumulates_has_norm_c(batch):
    """Send one sample per physical batch (hooks mode) and read what Opacus adds to `summed_grad`
    for it: that increment is the sample's clipped gradient, measured, not recomputed. It must
    point where the raw gradient points and have norm exactly C when the raw norm exceeds C."""
    c = 0.1
    increments, raw = [], []

    def hook(private, dp_opt):
        inner = dp_opt.clip_and_accumulate

        def clip_and_record():
            assert all(len(p.grad_sample) == 1 for p in dp_opt.params)  # one sample in this physical batch
            raw.append(torch.cat([p.grad_sample.reshape(-1) for p in dp_opt.params]))
            before = [torch.zeros_like(p) if p.summed_grad is None else p.summed_grad.clone() for p in dp_opt.params]
            inner()
            increments.append(torch.cat([(p.summed_grad - b).reshape(-1) for p, b in zip(dp_opt.params, before)]))

        dp_opt.clip_and_accumulate = clip_and_record

    train_private(tiny_net(), batch, max_grad_norm=c, epochs=1, batch_size=16, lr=None, optimizer="sgd",
                  grad_sample_mode="hooks", max_physical_batch_size=1, seed=0, device="cpu",
                  noise_multiplier=1.0, poisson=False, on_private=hook)
    assert len(increments) == len(batch)
    got, raw = torch.stack(increments), torch.stack(raw)
    big = raw.norm(dim=1) > c
    assert big.float().mean() > 0.9  # the bound really bites
    torch.testing.assert_close(got.norm(dim=1)[big], torch.full((int(big.sum()),), c), rtol=1e-3, atol=1e-7)
    torch.testing.assert_close(got[~big], raw[~big], rtol=1e-4, atol=1e-7)
    cosine = F.cosine_similarity(got, raw, dim=1)
    assert float(cosine.min()) > 0.9999
