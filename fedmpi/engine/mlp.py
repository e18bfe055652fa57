"""An MLP's clients stacked on a CPU: one batched matmul per layer for all of them, each stepping itself.

With the paper's 2NN at B = 10 a client's step is ~20 tiny ops. Stacking G
clients (each with its own weights, data and shuffling) makes each layer one
`baddbmm` over G matrices, and each Linear layer's backward applies the SGD
step into its weights (engine.linear_sgd), so no weight gradient is written
and read back: 0.29 ms per client step for G = 5 on one core, against 0.44-0.55
ms for the same stack through torch.func.vmap + a foreach step (2026-11-30,
docs/performance.md). Weights are stacked input-major (G, in, out), the
faster orientation of the batched products.

Every slice of a batched matmul is computed alone, so a client's numbers do
not depend on which clients share its stack, and they equal those of the
client trained alone through engine.loop (bitwise, tests/test_engine.py).

With client momentum or weight decay the layers' backward adds the
gradients into the clients' momentum buffers, and engine.local_sgd applies
them to the rows of the stack, which the layers then compute with directly
(no working copies).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedmpi.engine.flat import FlatModel
from fedmpi.engine.linear_sgd import linear_sgd


def is_mlp(model: nn.Module) -> bool:
    """An nn.Sequential of Flatten, then Linear layers (with bias) and ReLUs only (the 2NN)."""
    layers = list(model) if isinstance(model, nn.Sequential) else []
    return len(layers) > 1 and isinstance(layers[0], nn.Flatten) and all(
        isinstance(m, nn.ReLU) or (type(m) is nn.Linear and m.bias is not None) for m in layers[1:])


class FusedMLPStep:
    name = "stacked MLP (batched matmuls, fused SGD step)"

    def __init__(self, flat: FlatModel):
        self.flat = flat
        self.layers = [f"{i}" if isinstance(m, nn.Linear) else None for i, m in enumerate(flat.model)][1:]

    def begin(self, rows: torch.Tensor, lr: float, velocity: torch.Tensor | None = None) -> None:
        """Working copies of the G clients' Linear weights, input-major (G, in, out), and biases, which
        step themselves. Given `velocity` (G, dim: the clients' momentum buffers, engine.local_sgd), the
        layers add their gradients into it instead and compute with the rows themselves, which
        local_sgd steps."""
        self.views, _ = self.flat.stacked(rows)
        self.lr = lr
        self.params, self.into = {}, None
        if velocity is not None:
            buffers, _ = self.flat.stacked(velocity)
            self.into = {name: (buffers[f"{name}.weight"].transpose(1, 2), buffers[f"{name}.bias"])
                         for name in filter(None, self.layers)}
        for name in filter(None, self.layers):
            weight, bias = self.views[f"{name}.weight"].transpose(1, 2), self.views[f"{name}.bias"]
            if velocity is None:
                self.params[name] = (weight.clone(memory_format=torch.contiguous_format),
                                     bias.clone(memory_format=torch.contiguous_format))
            else:
                self.params[name] = (weight.detach(), bias.detach())
            for p in self.params[name]:
                p.requires_grad_()

    def __call__(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        g, b = y.shape
        h = x.reshape(g, b, -1)
        for name in self.layers:
            h = linear_sgd(h, *self.params[name], self.lr, self.into and self.into[name]) if name else torch.relu(h)
        loss = F.cross_entropy(h.flatten(0, 1), y.flatten(), reduction="none").view(g, -1)
        # mean over each client's rows that hold an example (a padded batch); 0 where none do
        loss = loss.mean(1) if mask is None else (loss * mask).sum(1) / mask.sum(1).clamp(min=1)
        loss.sum().backward()  # the layers step themselves
        return loss.detach()

    def end(self, rows: torch.Tensor) -> None:
        if self.into is not None:  # trained in the rows
            return
        with torch.no_grad():
            for name, (w, bias) in self.params.items():
                self.views[f"{name}.weight"].copy_(w.transpose(1, 2))
                self.views[f"{name}.bias"].copy_(bias)
