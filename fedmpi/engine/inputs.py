"""What the model sees: a batch of stored examples turned into model inputs on the device.

Each input kind is a callable `prepare(x, draws=None)` plus `draw(generator,
epochs, n)`, the random numbers of a client's data augmentation for all its
epochs (None without augmentation). The draws come from the client's own
generator, so a client's augmented batches, like its example order, are a
function of (seed, round, client) alone, wherever and with whomever it trains.
"""
from __future__ import annotations

import math

import torch


class Normalizer:
    """uint8 images (..., C, H, W) → (x/255 − mean)/std in the model's dtype, channels_last.

    Written as the textbook formula (not a fused multiply-add) so that it
    rounds exactly as torchvision's ToTensor + Normalize does. Leading
    dimensions (a stack of clients' batches) are kept.
    """

    def __init__(self, mean, std, device, dtype=torch.float32):
        self.mean = torch.tensor(mean, dtype=dtype, device=device).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=dtype, device=device).view(-1, 1, 1)
        self.dtype = dtype

    def __call__(self, x_uint8: torch.Tensor, draws: torch.Tensor | None = None) -> torch.Tensor:
        images = x_uint8.reshape(-1, *x_uint8.shape[-3:])
        x = images.to(self.dtype).div_(255).sub_(self.mean).div_(self.std)
        return x.contiguous(memory_format=torch.channels_last).view(x_uint8.shape)

    def draw(self, generator: torch.Generator, epochs: int, n: int) -> None:
        return None


class CifarAugment:
    """The paper's CIFAR-10 pipeline (the TensorFlow tutorial's): in training a random 24x24 crop of the
    32x32 image, a random left-right flip, brightness + U(−63, 63) and contrast × U(0.2, 1.8) on the
    0..255 scale; at evaluation the center crop; then each image standardised to mean 0, std 1."""

    CROP = 24
    MAX_DELTA, CONTRAST = 63.0, (0.2, 1.8)

    def __init__(self, device, dtype=torch.float32):
        self.device, self.dtype = device, dtype

    def draw(self, generator: torch.Generator, epochs: int, n: int) -> torch.Tensor:
        """(epochs, n, 5): crop offsets y and x, flip, brightness delta, contrast factor, per example."""
        u = torch.rand(epochs, n, 5, generator=generator, dtype=torch.float64)
        span = 32 - self.CROP + 1
        low, high = self.CONTRAST
        return torch.stack([(u[..., 0] * span).floor(), (u[..., 1] * span).floor(), (u[..., 2] < 0.5).double(),
                            (2 * u[..., 3] - 1) * self.MAX_DELTA, low + (high - low) * u[..., 4]], -1).to(self.dtype)

    def __call__(self, x_uint8: torch.Tensor, draws: torch.Tensor | None = None) -> torch.Tensor:
        lead = x_uint8.shape[:-3]
        x = x_uint8.reshape(-1, 3, 32, 32).to(self.dtype)
        c = self.CROP
        if draws is None:
            start = (32 - c) // 2
            x = x[..., start:start + c, start:start + c]
        else:
            d = draws.reshape(-1, 5)
            steps = torch.arange(c, device=x.device)
            rows = (d[:, 0].long()[:, None] + steps)[:, None, :, None]
            cols = (d[:, 1].long()[:, None] + steps)
            cols = torch.where(d[:, 2:3] > 0.5, cols.flip(-1), cols)[:, None, None, :]
            images = torch.arange(len(x), device=x.device)[:, None, None, None]
            x = x[images, torch.arange(3, device=x.device)[None, :, None, None], rows, cols]
            x = x + d[:, 3].view(-1, 1, 1, 1)
            mean = x.mean((-2, -1), keepdim=True)
            x = (x - mean) * d[:, 4].view(-1, 1, 1, 1) + mean
        mean = x.mean((1, 2, 3), keepdim=True)
        std = x.std((1, 2, 3), correction=0, keepdim=True).clamp_min(1 / math.sqrt(3 * c * c))
        x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
        return x.view(*lead, 3, c, c)


class Features:
    """float32 feature vectors (..., D) → the model's dtype."""

    def __init__(self, dtype=torch.float32):
        self.dtype = dtype

    def __call__(self, x: torch.Tensor, draws: torch.Tensor | None = None) -> torch.Tensor:
        return x.to(self.dtype)

    def draw(self, generator: torch.Generator, epochs: int, n: int) -> None:
        return None


class Tokens:
    """int16 token ids (..., T) → int64 indices for an embedding."""

    def __call__(self, x: torch.Tensor, draws: torch.Tensor | None = None) -> torch.Tensor:
        return x.long()

    def draw(self, generator: torch.Generator, epochs: int, n: int) -> None:
        return None


def inputs_for(fed, device, dtype):
    """The input pipeline of a federation (data.Federation)."""
    if fed.kind == "sequence":
        return Tokens()
    if fed.kind == "features":
        return Features(dtype)
    if fed.manifest.get("augment") == "cifar":
        return CifarAugment(device, dtype)
    norm = fed.manifest["normalize"]
    return Normalizer(norm["mean"], norm["std"], device, dtype)
