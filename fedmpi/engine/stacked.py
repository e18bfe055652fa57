"""G clients stacked through torch.func: any model, any device; on CUDA replayed from a graph.

A client's step is one function of (parameters, buffers, batch):
`grad_and_value` of its loss through `functional_call`, mapped over the G
clients' stacked parameters, buffers and batches by `vmap`, then one
`_foreach_add_` step for all of them (with client momentum or weight decay:
one `_foreach_add_` of the gradients into their momentum buffers). BatchNorm's
running statistics are stacked too, so each client updates its own.
Randomness inside the model (dropout) is refused (`randomness="error"`): its
draws would depend on the stack, and the engine then trains the model one
client at a time.

On CUDA a stack's whole local training (E epochs of steps, shapes static)
is captured once per shape into a CUDA graph and replayed each round: the
steps of small models are bound by kernel launches, which the graph removes.
Stacks are padded to a few shapes (Engine.shape) and at most MAX_GRAPHS
graphs are kept, so unbalanced clients do not capture a graph every round.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch
from torch.func import functional_call, grad_and_value, vmap

from fedmpi.engine.flat import FlatModel
from fedmpi.engine.loss import masked_cross_entropy, token_cross_entropy


class VmapStep:
    name = "stacked (torch.func.vmap)"

    def __init__(self, flat: FlatModel):
        self.flat = flat

        def loss_of(params, buffers, x, y):
            return token_cross_entropy(functional_call(flat.model, (params, buffers), (x,)), y)

        def masked_loss_of(params, buffers, x, y, mask):
            return masked_cross_entropy(functional_call(flat.model, (params, buffers), (x,)), y, mask)
        self.grad = vmap(grad_and_value(loss_of), randomness="error")
        self.masked_grad = vmap(grad_and_value(masked_loss_of), randomness="error")

    def begin(self, rows: torch.Tensor, lr: float, velocity: torch.Tensor | None = None) -> None:
        """Train the clients in `rows` (G, dim): each step moves their parameters by −η·∇, or, given
        `velocity` (G, dim: their momentum buffers, engine.local_sgd), adds ∇ into that instead."""
        self.params, self.views = self.flat.stacked(rows)
        # vmap's batch norm updates its running statistics in contiguous copies of strided ones
        self.buffers = {name: b.contiguous() for name, b in self.views.items()}
        targets = self.params if velocity is None else self.flat.stacked(velocity)[0]
        self.targets, self.alpha = list(targets.values()), (-lr if velocity is None else 1.0)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            grads, losses = self.grad(self.params, self.buffers, x, y)
        else:
            grads, losses = self.masked_grad(self.params, self.buffers, x, y, mask)
        with torch.no_grad():
            torch._foreach_add_(self.targets, [grads[n] for n in self.params], alpha=self.alpha)
        return losses

    def end(self, rows: torch.Tensor) -> None:
        with torch.no_grad():
            for name in self.flat.buffer_names:
                self.views[name].copy_(self.buffers[name])


# Graphs kept at once. A stack's shapes come in a few sizes (Engine.shape's buckets), so a run needs a
# few dozen at most; past this the least recently used is dropped, with its memory.
MAX_GRAPHS = 64


class GraphedTraining:
    """Runs `train(rows, x, y, orders, mask, draws, batch, lr, rule, limit)` from a CUDA graph captured
    once per shape of its inputs and value of the numbers it bakes in (batch, η, the rule's μ, momentum
    and weight decay: engine.Rule, and the limit on steps).

    The inputs (the rule's offsets among them) are copied into the graph's static tensors before each
    replay and the trained rows copied out after it; a capture that fails turns graphs off for good
    (eager from then on).
    """

    def __init__(self, train: Callable):
        self.train = train
        # each with its own memory pool: they replay in any order; the least recently used goes first
        self.graphs: OrderedDict[tuple, tuple] = OrderedDict()

    def __call__(self, rows, x, y, orders, mask, draws, batch, lr, rule=None, limit=None):
        inputs = (rows, x, y, orders, mask, draws, rule and rule.offset)
        key = (*(None if t is None else tuple(t.shape) for t in inputs), batch, lr,
               rule and rule._replace(offset=None), limit)
        if key not in self.graphs:
            if len(self.graphs) == MAX_GRAPHS:
                self.graphs.popitem(last=False)
            self.graphs[key] = self._capture(inputs, batch, lr, rule, limit)
        self.graphs.move_to_end(key)
        graph, static, losses = self.graphs[key]
        for s, v in zip(static, inputs):
            if v is not None:
                s.copy_(v)
        graph.replay()
        rows.copy_(static[0])
        return losses.clone()

    def _capture(self, inputs, batch, lr, rule, limit):
        static = [None if t is None else t.clone() for t in inputs]
        rows, x, y, orders, mask, draws, offset = static
        rule = rule and rule._replace(offset=offset)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up, as CUDA graphs ask: one step, on the static copies
            b = orders.shape[2] if batch == 0 else min(batch, orders.shape[2])
            self.train(rows, x, y, orders[:, :1, :b], None if mask is None else mask[:, :1, :b],
                       None if draws is None else draws[:, :1], 0, lr, rule)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            losses = self.train(rows, x, y, orders, mask, draws, batch, lr, rule, limit)
        return graph, static, losses
