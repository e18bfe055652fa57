"""What the model sees: uint8 pixels become (x/255 − mean)/std on the device, when a batch is formed."""
from __future__ import annotations

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

    def __call__(self, x_uint8: torch.Tensor) -> torch.Tensor:
        images = x_uint8.reshape(-1, *x_uint8.shape[-3:])
        x = images.to(self.dtype).div_(255).sub_(self.mean).div_(self.std)
        return x.contiguous(memory_format=torch.channels_last).view(x_uint8.shape)
