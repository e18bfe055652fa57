"""The paper's MNIST models (McMahan et al. 2017, section 3), for any image shape and class count,
and a one-hidden-layer MLP.

Parameter counts for MNIST (1x28x28, 10 classes) match the paper: 2NN
199,210 and CNN 1,663,370 ('same' padding).
"""
from __future__ import annotations

import math

from torch import nn


def two_nn(image_shape, num_classes: int) -> nn.Module:
    """MLP with two hidden layers of 200 units and ReLU (the paper's 2NN)."""
    d = math.prod(image_shape)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(),
                         nn.Linear(200, num_classes))


def mlp(input_shape, num_classes: int) -> nn.Module:
    """One hidden layer of 200 units and ReLU: a small model for many small clients (synthetic data)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 200), nn.ReLU(),
                         nn.Linear(200, num_classes))


def cnn(image_shape, num_classes: int) -> nn.Module:
    """Two 5x5 conv layers (32, 64 channels) with 2x2 max pooling, FC 512, softmax output."""
    c, h, w = image_shape
    return nn.Sequential(
        nn.Conv2d(c, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * (h // 4) * (w // 4), 512), nn.ReLU(), nn.Linear(512, num_classes))
