"""Cohen et al.'s CIFAR ResNet-110 is registered and has the paper's size."""

import torch

from poisonguard.models import build_model, check_classifier


def test_resnet110_registered_with_about_1_7m_parameters():
    model = build_model("resnet110", num_classes=10, input_shape=(3, 32, 32))
    assert 1.6e6 < sum(p.numel() for p in model.parameters()) < 1.8e6  # He et al. (2016): 1.7M
    assert len(model.layer1) == len(model.layer2) == len(model.layer3) == 18


def test_resnet20_classifies_unit_inputs():
    model = build_model("resnet20", num_classes=10, input_shape=(3, 32, 32)).eval()
    check_classifier(model, (3, 32, 32), 10)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
