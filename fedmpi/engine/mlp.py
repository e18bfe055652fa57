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
from fedmpi.engine.linear_sgd import backward_and_step


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
        self.first = next(i for i, name in enumerate(self.layers) if name)

    def begin(self, rows: torch.Tensor, lr: float, velocity: torch.Tensor | None = None) -> None:
        """Working copies of the G clients' Linear weights, input-major (G, in, out), and biases, which
        step themselves. Given `velocity` (G, dim: the clients' momentum buffers, engine.local_sgd), the
        layers add their gradients into it instead and compute with the rows themselves, which
        local_sgd steps."""
        self.views, _ = self.flat.stacked(rows)
        self.alpha = -lr if velocity is None else 1.0
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
                self.params[name] = (weight, bias)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """One step of the G clients; their batch losses. The backward pass is written out: autograd's own
        kernels in autograd's order (so its numbers, bit for bit), without its graph, whose set-up and
        Python Function calls cost as much as the products at B = 10 (docs/performance.md)."""
        g, b = y.shape
        h = x.reshape(g, b, -1)
        saved = []  # each Linear layer's input, each ReLU's output
        for name in self.layers:
            if name:
                saved.append(h)
                weight, bias = self.params[name]
                h = torch.baddbmm(bias.unsqueeze(1), h, weight)
            else:
                h = torch.relu(h)
                saved.append(h)
        # cross_entropy as ATen computes it: log_softmax, then nll_loss
        log_p = torch.log_softmax(h.flatten(0, 1), 1)
        target = y.flatten()
        loss = F.nll_loss(log_p, target, reduction="none").view(g, -1)
        # the mean over each client's rows that hold an example (a padded batch; 0 where none do), and
        # the gradient of the clients' sum of means with respect to each row's loss
        if mask is None:
            per_row = loss.new_ones(g, 1).expand(g, b) / b
            loss = loss.mean(1)
        else:
            rows = mask.sum(1).clamp(min=1)
            per_row = (loss.new_ones(g) / rows).unsqueeze(1) * mask
            loss = (loss * mask).sum(1) / rows
        grad = torch.zeros_like(log_p).scatter_(1, target.unsqueeze(1), -per_row.reshape(-1, 1))
        grad = torch._log_softmax_backward_data(grad, log_p, 1, log_p.dtype).view(g, b, -1)
        for i in reversed(range(self.first, len(self.layers))):  # no gradient below the first Linear layer
            name = self.layers[i]
            if name:  # the layer steps itself
                grad = backward_and_step(grad, saved[i], *self.params[name], self.alpha,
                                         self.into and self.into[name], input_grad=i > self.first)
            else:
                grad = torch.ops.aten.threshold_backward(grad, saved[i], 0)
        return loss

    def end(self, rows: torch.Tensor) -> None:
        if self.into is not None:  # trained in the rows
            return
        with torch.no_grad():
            for name, (w, bias) in self.params.items():
                self.views[f"{name}.weight"].copy_(w.transpose(1, 2))
                self.views[f"{name}.bias"].copy_(bias)
