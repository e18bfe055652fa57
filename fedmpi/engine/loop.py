"""One client at a time through the model itself: the reference path, and the fast one for convolutions on CPUs.

The module's parameters and float buffers are pointed at the client's row of
the stack (FlatModel.bind), so SGD steps and BatchNorm's running statistics
land in that row. Linear layers step themselves in backward
(engine.linear_sgd: ~13 % off a CNN step at B = 10 on one core); the other
parameters get fresh gradients that one `_foreach_add_` applies. With client
momentum or weight decay the gradients go into the client's momentum buffer
instead, which engine.local_sgd applies.
"""
from __future__ import annotations

import torch

from fedmpi.engine.flat import FlatModel
from fedmpi.engine.linear_sgd import FusedLinearLayers
from fedmpi.engine.loss import token_cross_entropy


class LoopStep:
    name = "one client at a time"

    def __init__(self, flat: FlatModel):
        self.flat = flat
        self.fused = FusedLinearLayers(flat.model)
        self.params = list(flat.model.parameters())

    def begin(self, rows: torch.Tensor, lr: float, velocity: torch.Tensor | None = None) -> None:
        """Train the client in `rows` (1, dim): each step moves its parameters by −η·∇, or, given
        `velocity` (1, dim: its momentum buffer, engine.local_sgd), adds ∇ into that instead."""
        assert rows.shape[0] == 1, "one client at a time"
        self.flat.bind(rows[0])
        self.fused.lr = lr
        self.alpha = -lr
        self.into = None
        self.fused.into = None
        if velocity is not None:
            self.alpha = 1.0
            views = {name: self.flat.view(velocity[0], name) for name in self.flat.param_names}
            self.into = dict(zip(self.params, views.values()))
            self.fused.into = {layer: (views[f"{name}.weight"].t(), views[f"{name}.bias"])
                               for name, layer in self.fused.layers.items()}

    def __call__(self, x: torch.Tensor, y: torch.Tensor, mask: None = None) -> torch.Tensor:
        loss = token_cross_entropy(self.flat.model(x[0]), y[0])
        loss.backward()
        with torch.no_grad():
            params = [p for p in self.params if p.grad is not None]  # Linear layers stepped themselves
            if params:
                targets = params if self.into is None else [self.into[p] for p in params]
                torch._foreach_add_(targets, [p.grad for p in params], alpha=self.alpha)
            for p in params:
                p.grad = None  # the next backward writes fresh gradients (cheaper than accumulating)
        return loss.detach().unsqueeze(0)

    def end(self, rows: torch.Tensor) -> None:
        self.flat.bind(self.flat.weights)
