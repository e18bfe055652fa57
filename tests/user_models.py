"""Models a user might bring (`model = "user_models:NAME"`, with tests/ on PYTHONPATH): not nn.Sequential,
with BatchNorm, GroupNorm, LayerNorm, dropout."""
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
