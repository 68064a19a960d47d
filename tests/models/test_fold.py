"""Batch norms folded into convolutions: the same function, hooks kept, untraceable models untouched."""

from __future__ import annotations

import copy

import torch
from torch import nn

from poisonguard.models import build_model, frozen_copy
from poisonguard.models.fold import fold_batch_norms


def _trained_stats(model: nn.Module, shape) -> nn.Module:
    """Running statistics far from (0, 1), so a wrong fold would show."""
    model.train()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(3):
            model(3 * torch.rand(32, *shape, generator=gen) - 1)
    return model.eval()


def _plain(model: nn.Module) -> nn.Module:
    plain = copy.deepcopy(model).eval()
    for p in plain.parameters():
        p.requires_grad_(False)
    return plain


def _output_and_input_grad(model, x):
    x = x.clone().requires_grad_(True)
    out = model(x)
    (grad,) = torch.autograd.grad(out.logsumexp(1).sum(), x)
    return out, grad


def test_folded_resnet_computes_the_same_outputs_and_input_gradients():
    shape = (3, 32, 32)
    model = _trained_stats(build_model("resnet20", num_classes=10, input_shape=shape, seed=0), shape)
    frozen = frozen_copy(model, torch.device("cpu"))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())  # every conv -> bn pair folded
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())        # the caller's model untouched
    x = torch.rand(16, *shape, generator=torch.Generator().manual_seed(1))
    # Against the unfolded model in double precision (float32 rounding differs either way).
    out_a, grad_a = _output_and_input_grad(_plain(model).double(), x.double())
    out_b, grad_b = _output_and_input_grad(frozen, x)
    assert (out_a - out_b).abs().max() <= 1e-4 * out_a.abs().max()
    assert (grad_a - grad_b).abs().max() <= 1e-3 * grad_a.abs().max()


def test_hooks_on_other_layers_still_fire_after_folding():
    shape = (3, 32, 32)
    frozen = frozen_copy(_trained_stats(build_model("cifar_cnn", num_classes=10, input_shape=shape, seed=0), shape),
                         torch.device("cpu"))
    seen = []
    last = [m for m in frozen.modules() if isinstance(m, nn.Linear)][-1]
    last.register_forward_pre_hook(lambda _m, inp: seen.append(inp[0].shape))
    frozen(torch.rand(2, *shape))
    assert seen == [torch.Size([2, 128])]


class _Branchy(nn.Module):
    """Data-dependent control flow: fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.head = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.bn(self.conv(x))
        if h.mean() > 100:
            h = -h
        return self.head(h.mean((2, 3)))


class _Shared(nn.Module):
    """A conv whose output also skips past the batch norm: folding would change the sum."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.head = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.conv(x)
        return self.head((self.bn(h) + h).mean((2, 3)))


def test_untraceable_or_shared_outputs_are_left_as_they_are():
    for cls in (_Branchy, _Shared):
        model = _trained_stats(cls(), (1, 8, 8))
        assert fold_batch_norms(copy.deepcopy(model)) == 0
        x = torch.rand(4, 1, 8, 8)
        assert torch.allclose(frozen_copy(model, torch.device("cpu"))(x), _plain(model)(x))


def test_a_graph_file_whose_graph_reads_a_batch_norms_counter_keeps_it(tmp_path):
    # torch.export keeps `num_batches_tracked` read outside the batch norm's call; lifted to
    # modules, folding that norm into an Identity made every scan of the .pt2 crash.
    from poisonguard.models import load_model

    shape = (1, 12, 12)
    model = _trained_stats(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                                         nn.Linear(4 * 12 * 12, 3)), shape)
    torch.export.save(torch.export.export(model, (torch.rand(2, *shape),)), tmp_path / "m.pt2")
    loaded = load_model(str(tmp_path / "m.pt2"), input_shape=shape, num_classes=3)
    frozen = frozen_copy(loaded.model, torch.device("cpu"), shape)
    x = torch.rand(5, *shape, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(frozen(x), model(x), rtol=1e-4, atol=1e-5)
