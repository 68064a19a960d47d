"""Channels-last frozen copies: kept where the model computes the same with them, refused where not."""

from __future__ import annotations

import torch
from torch import nn

from poisonguard.models import build_model, frozen_copy

CPU = torch.device("cpu")


def _is_channels_last(model: nn.Module) -> bool:
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    return conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()


class FlattensWithView(nn.Module):
    """A user's model that flattens a conv output with `view`, which a channels-last tensor refuses."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        return self.head(h.view(h.size(0), -1))


def test_resnet_copy_takes_channels_last_and_computes_the_same():
    shape = (3, 32, 32)
    model = build_model("resnet20", num_classes=10, input_shape=shape, seed=0).eval()
    frozen = frozen_copy(model, CPU, shape)
    assert _is_channels_last(frozen) and not _is_channels_last(model)
    x = torch.rand(8, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model.double()(x.double())
    got = frozen(x)
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(frozen(x).logsumexp(1).sum(), x)  # detectors need gradients to the input
    assert grad.shape == x.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_a_model_that_views_its_conv_output_keeps_its_own_layout_and_works():
    shape = (3, 8, 8)
    model = FlattensWithView().eval()
    frozen = frozen_copy(model, CPU, shape)
    assert not _is_channels_last(frozen)
    x = torch.rand(5, *shape)
    with torch.no_grad():
        assert torch.allclose(frozen(x), model(x), atol=1e-6)


def test_no_shape_or_no_image_means_no_conversion():
    shape = (3, 32, 32)
    model = build_model("cifar_cnn", num_classes=10, input_shape=shape, seed=0).eval()
    assert not _is_channels_last(frozen_copy(model, CPU))
    table = build_model("mlp", num_classes=2, input_shape=(6,), seed=0).eval()
    frozen = frozen_copy(table, CPU, (6,))
    with torch.no_grad():
        assert frozen(torch.rand(3, 6)).shape == (3, 2)
