"""The paper's CIFAR-10 model (McMahan et al. 2017, section 3): the TensorFlow tutorial's CNN.

Two 5x5 convolutions of 64 channels, each followed by 3x3 max pooling with
stride 2 and local response normalisation (the first pools then normalises,
the second the other way round, as the tutorial does), then fully connected
layers of 384 and 192 units and a linear layer to the 10 classes; on 24x24
crops 1,068,298 parameters ("about 10^6", the paper says).
"""
from __future__ import annotations

from torch import nn


def cnn(input_shape, num_classes: int) -> nn.Module:
    c, h, w = input_shape
    # TensorFlow's LRN (depth_radius 4, bias 1, alpha 0.001/9, beta 0.75) in torch's terms: size 9, alpha 0.001
    lrn = dict(size=9, alpha=0.001, beta=0.75, k=1.0)
    return nn.Sequential(
        nn.Conv2d(c, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1), nn.LocalResponseNorm(**lrn),
        nn.Conv2d(64, 64, 5, padding=2), nn.ReLU(), nn.LocalResponseNorm(**lrn), nn.MaxPool2d(3, 2, padding=1),
        nn.Flatten(), nn.Linear(64 * -(-h // 4) * -(-w // 4), 384), nn.ReLU(), nn.Linear(384, 192), nn.ReLU(),
        nn.Linear(192, num_classes))
