"""The loss and accuracy of classification, per example for images and per token for sequences."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def token_cross_entropy(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of logits (..., classes) against targets (...): per image, or per token of a sequence."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction=reduction)


def correct(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """How many targets (images or tokens) the logits' argmax gets right."""
    return (logits.argmax(-1) == y).sum()
