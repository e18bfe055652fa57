"""Models a user might bring (`model = "user_models:NAME"`, with tests/ on PYTHONPATH): not nn.Sequential,
with BatchNorm, GroupNorm, LayerNorm, dropout."""
import torch
from torch import nn


class SmallBNNet(nn.Module):
    """conv → BatchNorm → ReLU → pool, twice, then Linear: float buffers (running statistics) to average."""

    def __init__(self, image_shape, num_classes):
        super().__init__()
        c, h, w = image_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, 8, 5, padding=2), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 5, padding=2), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(16 * (h // 4) * (w // 4), num_classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def bn_net(image_shape, num_classes):
    return SmallBNNet(image_shape, num_classes)


def norm_net(image_shape, num_classes):
    """GroupNorm and LayerNorm: no running statistics, parameters only."""
    c, h, w = image_shape
    return nn.Sequential(nn.Conv2d(c, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(), nn.MaxPool2d(4),
                         nn.Flatten(), nn.LayerNorm(8 * (h // 4) * (w // 4)), nn.Linear(8 * (h // 4) * (w // 4), 32),
                         nn.ReLU(), nn.Linear(32, num_classes))


def dropout_net(image_shape, num_classes):
    """Dropout draws random numbers: vmap refuses to stack it, the engine trains it one client at a time."""
    c, h, w = image_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 32), nn.Dropout(0.5), nn.ReLU(), nn.Linear(32, num_classes))


def broken_net(image_shape, num_classes):
    raise ValueError("this model needs 3 channels")


def layer_list(image_shape, num_classes):
    return [nn.Linear(1, 1)]


not_a_model = 42


def bn_mlp(image_shape, num_classes):
    """BatchNorm1d between Linear layers."""
    c, h, w = image_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 64), nn.BatchNorm1d(64), nn.ReLU(),
                         nn.Linear(64, num_classes))


def _on_rank_2(action):
    """A builder that runs `action` on rank 2 of an MPI job only, then builds the 2NN."""
    def build(image_shape, num_classes):
        from mpi4py import MPI

        if MPI.COMM_WORLD.rank == 2:
            action()
        return nn.Sequential(nn.Flatten(), nn.Linear(image_shape[0] * image_shape[1] * image_shape[2], num_classes))
    return build


def _raise_keyboard_interrupt():
    raise KeyboardInterrupt


def _sleep_forever():
    """Leaves a mark (the file named by $FEDMPI_TEST_MARK) that it has begun, then never returns."""
    import os
    import time

    open(os.environ["FEDMPI_TEST_MARK"], "w").close()
    while True:
        time.sleep(1)


def exits(image_shape, num_classes):
    import sys

    sys.exit("missing dep")


exits_on_rank_2 = _on_rank_2(lambda: exits(None, None))
interrupted_on_rank_2 = _on_rank_2(_raise_keyboard_interrupt)
sleeps_on_rank_2 = _on_rank_2(_sleep_forever)


def five_logits(image_shape, num_classes):
    """Five outputs whatever the federation's classes: a mistake set-up must catch, not round 1."""
    c, h, w = image_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 5))


def changing_net(image_shape, num_classes):
    """What a user edits between a run and its --resume: $HIDDEN units, in $NAMES-named layers
    (`seq`: nn.Sequential's 1, 3; `named`: hidden, out: the same shapes under other names)."""
    import os

    c, h, w = image_shape
    hidden = int(os.environ.get("HIDDEN", "50"))
    layers = [nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)]
    if os.environ.get("NAMES", "seq") == "seq":
        return nn.Sequential(*layers)
    from collections import OrderedDict

    return nn.Sequential(OrderedDict(zip(["flatten", "hidden", "relu", "out"], layers)))


class _StridedHead(nn.Module):
    """A parameter that is a strided view (every other column of a wider tensor): not dense in memory."""

    def __init__(self, inputs, num_classes, strided):
        super().__init__()
        wide = torch.randn(num_classes, 2 * inputs) * 0.01
        self.weight = nn.Parameter(wide[:, ::2] if strided else wide[:, ::2].contiguous())
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, x):
        return x.flatten(1) @ self.weight.t() + self.bias


def strided_head(image_shape, num_classes):
    c, h, w = image_shape
    return _StridedHead(c * h * w, num_classes, strided=True)


def contiguous_head(image_shape, num_classes):
    """strided_head's values (same draws), stored contiguously."""
    c, h, w = image_shape
    return _StridedHead(c * h * w, num_classes, strided=False)


def wide_net(image_shape, num_classes):
    """One hidden layer of $HIDDEN units (a test sizes it to the machine's memory)."""
    import os

    c, h, w = image_shape
    hidden = int(os.environ["HIDDEN"])
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
