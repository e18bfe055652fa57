"""The paper's models, built for a federation's image shape and class count.

Parameter counts for MNIST (1x28x28, 10 classes) match McMahan et al. 2017:
2NN 199,210 and CNN 1,663,370 ('same' padding).
"""
from __future__ import annotations

import math

import torch
from torch import nn


def two_nn(image_shape, num_classes: int) -> nn.Module:
    """MLP with two hidden layers of 200 units and ReLU (the paper's 2NN)."""
    d = math.prod(image_shape)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(),
                         nn.Linear(200, num_classes))


def cnn(image_shape, num_classes: int) -> nn.Module:
    """Two 5x5 conv layers (32, 64 channels) with 2x2 max pooling, FC 512, softmax output."""
    c, h, w = image_shape
    return nn.Sequential(
        nn.Conv2d(c, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * (h // 4) * (w // 4), 512), nn.ReLU(), nn.Linear(512, num_classes))


REGISTRY = {"2nn": two_nn, "cnn": cnn}


def build_model(name: str, image_shape, num_classes: int, seed: int) -> nn.Module:
    """Build a model whose initial weights are a function of `seed` alone.

    Contract (used by tests and by resume): w_0 is what torch's default
    initialisation draws right after `torch.manual_seed(seed)`; conv weights
    are then stored channels_last, and Linear weights input-major (same
    values, other memory order; checkpoint.FORMAT names this layout).
    """
    torch.manual_seed(seed)
    model = REGISTRY[name](tuple(image_shape), num_classes)
    # Input-major Linear weights (W^T contiguous): x·W^T is then the fast orientation of the
    # training products (fedmpi.linear_sgd) and the one fedmpi.stacked batches, so a client
    # trained alone or stacked rounds alike.
    for m in model:
        if isinstance(m, nn.Linear):
            m.weight.data = m.weight.data.t().contiguous().t()
    # NHWC convolutions are ~22 % faster on CPU (oneDNN) at the paper's batch sizes.
    return model.to(memory_format=torch.channels_last)


def is_mlp(model: nn.Module) -> bool:
    """Flatten, then Linear and ReLU layers only (the 2NN)."""
    layers = list(model) if isinstance(model, nn.Sequential) else []
    return len(layers) > 1 and isinstance(layers[0], nn.Flatten) \
        and all(isinstance(m, (nn.Linear, nn.ReLU)) for m in layers[1:])


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
