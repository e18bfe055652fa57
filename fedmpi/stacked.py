"""Training a worker's clients of an MLP together: one batched matmul per layer for all of them.

With the paper's 2NN at B = 10 a client's step is ~20 tiny ops, so a worker
training its clients one after another pays per-op overhead on every step.
Stacking the G clients of a round (each with its own weights, data and
shuffling) turns each layer into one `baddbmm` over G matrices: 0.09 s instead of
0.14 s for 5 clients on one core (docs/performance.md).

A client's numbers do not depend on which clients share its batch, so results
stay independent of the rank count: every slice of a batched matmul is
computed alone, and every client on a CPU goes through this path, even when it
trains alone (G = 1). Weights are stacked input-major (G, in, out), the faster
orientation of the batched products; models.build_model stores Linear
weights input-major too, and both paths step through fedmpi.linear_sgd, so
that a client trained alone (as on a GPU) rounds exactly as a stacked one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedmpi.fedavg import FlatModel, Normalizer
from fedmpi.linear_sgd import linear_sgd
from fedmpi.models import is_mlp


def stackable(flat: FlatModel) -> bool:
    """An MLP (models.is_mlp) on a CPU.

    (On GPUs clients train one at a time: the slice-by-slice results of
    cuBLAS batched products are not verified to be independent of G there.)
    """
    return flat.weights.device.type == "cpu" and is_mlp(flat.model)


class StackedMLP:
    """Trains G clients of a Flatten/Linear/ReLU model from the same start weights at once."""

    def __init__(self, flat: FlatModel):
        self.layers = []  # ("linear", weight offset, (out, in), weight strides, bias offset) or ("relu",)
        offsets, offset = {}, 0
        for p in flat.params:
            offsets[id(p)] = offset
            offset += p.numel()
        for m in list(flat.model)[1:]:
            if isinstance(m, nn.Linear):
                self.layers.append(("linear", offsets[id(m.weight)], tuple(m.weight.shape), m.weight.stride(),
                                    offsets[id(m.bias)]))
            else:
                self.layers.append(("relu",))
        self.linears = [layer for layer in self.layers if layer[0] == "linear"]

    def _forward(self, params, h, lr):
        it = iter(params)
        for layer in self.layers:
            h = linear_sgd(h, next(it), next(it), lr) if layer[0] == "linear" else torch.relu(h)
        return h

    def train(self, start: torch.Tensor, data: list[tuple[torch.Tensor, torch.Tensor]],
              generators: list[torch.Generator], epochs: int, batch_size: int, lr: float,
              normalize: Normalizer) -> tuple[torch.Tensor, list[float]]:
        """E epochs of minibatch SGD for each client (all with the same n); returns
        their final weights as rows of a (G, dim) tensor and each one's mean batch loss."""
        g, n = len(data), len(data[0][1])
        params = []
        for _, w_off, shape, strides, b_off in self.linears:
            out_f = shape[0]
            w = start.as_strided(shape, strides, w_off).t()
            params += [w.unsqueeze(0).repeat(g, 1, 1).requires_grad_(),
                       start[b_off:b_off + out_f].unsqueeze(0).repeat(g, 1).requires_grad_()]
        x_all = torch.stack([x for x, _ in data])
        y_all = torch.stack([y for _, y in data])
        rows = torch.arange(g).unsqueeze(1)
        b = n if batch_size == 0 else batch_size
        total = torch.zeros(g)
        steps = 0
        for _ in range(epochs):
            order = torch.stack([torch.randperm(n, generator=gen) for gen in generators])
            for i in range(0, n, b):
                idx = order[:, i:i + b]
                x = normalize(x_all[rows, idx].flatten(0, 1)).reshape(g, idx.shape[1], -1)
                logits = self._forward(params, x, lr)
                loss = F.cross_entropy(logits.flatten(0, 1), y_all[rows, idx].flatten(),
                                       reduction="none").view(g, -1).mean(1)
                loss.sum().backward()  # the layers step themselves (fedmpi.linear_sgd)
                total += loss.detach()
                steps += 1
        weights = start.repeat(g, 1)
        it = iter(params)
        for _, w_off, shape, strides, b_off in self.linears:
            w, bias = next(it).detach(), next(it).detach()
            weights.as_strided((g, *shape), (weights.stride(0), *strides), w_off).copy_(w.transpose(1, 2))
            weights[:, b_off:b_off + shape[0]].copy_(bias)
        return weights, [float(t) / steps for t in total]
