"""Small convolutional networks for 28x28-class inputs (MNIST-sized), fast on a CPU."""

from __future__ import annotations

from torch import nn

from poisonguard.models.registry import ARCHITECTURES, normalizer


@ARCHITECTURES.register("mnist_cnn")
def mnist_cnn(*, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """Two 3x3 conv blocks and a small classifier head (about 0.2M parameters for MNIST).

    `features` ends at the last convolution's activation, which fine-pruning prunes.
    """
    c, h, w = input_shape
    features = nn.Sequential(
        normalizer(c),
        nn.Conv2d(c, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    )
    return nn.Sequential(
        features,
        nn.Flatten(),
        nn.Linear(32 * (h // 4) * (w // 4), 128), nn.ReLU(),
        nn.Linear(128, num_classes),
    )


@ARCHITECTURES.register("lenet5")
def lenet5(*, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """LeNet-5 (LeCun et al., 1998) with ReLU and max pooling: a second, differently shaped CNN."""
    c, h, w = input_shape
    features = nn.Sequential(
        normalizer(c),
        nn.Conv2d(c, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
    )
    return nn.Sequential(
        features,
        nn.Flatten(),
        nn.Linear(16 * ((h // 2 - 4) // 2) * ((w // 2 - 4) // 2), 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, num_classes),
    )
