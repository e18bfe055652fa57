"""The loss and accuracy of classification, per example for images and per token for sequences.

A target of -1 is no target (a padded position of a token sequence): it
counts neither in the loss nor in the accuracy.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

NO_TARGET = -1


def token_cross_entropy(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of logits (..., classes) against targets (...): per image, or per token of a sequence."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1).long(), reduction=reduction,
                           ignore_index=NO_TARGET)


def masked_cross_entropy(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean cross-entropy of the examples whose `mask` is set (a batch padded to B rows); 0 for none."""
    per_target = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1).long(), reduction="none",
                                 ignore_index=NO_TARGET).view(y.shape)
    valid = (y != NO_TARGET) & mask.view(-1, *(1,) * (y.dim() - 1))
    return (per_target * valid).sum() / valid.sum().clamp(min=1)


def correct(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """How many targets (images or tokens) the logits' argmax gets right."""
    return (logits.argmax(-1) == y).sum()


def count(y: torch.Tensor) -> int:
    """How many targets there are."""
    return int((y != NO_TARGET).sum())
