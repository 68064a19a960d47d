"""A small CNN for 32x32 colour inputs: three conv blocks with batch norm, fast on a CPU.

Between `mnist_cnn` (two conv layers, no batch norm; 71% on CIFAR-10 after 10 epochs of
Adam) and ResNet-20 (about 4x its cost): about 10M multiply-adds per 32x32 image, 5x
`mnist_cnn`. It exists for `sanitize` on CIFAR-sized data, where the representation of the
model sanitize trains decides what it can see: on the tuning seed 1, with all 50,000
CIFAR-10 images and a 1% blend trigger, `mnist_cnn` learnt the trigger to 49% attack success
and its poison formed no cluster (SCAn AUC inside the target class 0.33); these blocks (in
that first run without the input normaliser) reached
79% accuracy, learnt it to 97.5%, and SCAn found every poisoned image (AUC 1.000) in 333 s of
training on 2 cores (notes/issue-17.md, session 8).

`features` ends at the last convolution block's pooled activation, which fine-pruning prunes.
"""

from __future__ import annotations

from torch import nn

from poisonguard.models.registry import ARCHITECTURES, normalizer


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]


@ARCHITECTURES.register("cifar_cnn")
def cifar_cnn(*, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """Conv blocks of 32, 64 and 128 channels (3x3, batch norm, ReLU, 2x2 max pool), then 128 hidden units."""
    c, h, w = input_shape
    features = nn.Sequential(normalizer(c), *_block(c, 32), *_block(32, 64), *_block(64, 128))
    return nn.Sequential(
        features,
        nn.Flatten(),
        nn.Linear(128 * (h // 8) * (w // 8), 128), nn.ReLU(),
        nn.Linear(128, num_classes),
    )
