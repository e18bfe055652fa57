"""A model whose state is one flat buffer: parameters and float buffers are views into it.

The broadcast lands in it with one copy and a client's update is a
subtraction, with no per-tensor gathering. A stack of G clients is a (G, dim)
matrix whose rows are such buffers, each tensor seen through views with the
same per-tensor strides (`stacked`). Each tensor keeps its own memory format
inside the buffer (channels_last conv weights, input-major Linear weights), so
every rank must build the model the same way (models.build_model does).

Float buffers (BatchNorm's running statistics) are part of the flat state, so
they are averaged n-weighted like the parameters. Integer buffers
(BatchNorm's num_batches_tracked) are not federated: every client starts
from their initial values (docs/architecture.md).
"""
from __future__ import annotations

import torch
from torch import nn


class FlatModel:
    def __init__(self, model: nn.Module, device: torch.device, dtype: torch.dtype = torch.float32):
        self.model = model.to(device=device, dtype=dtype)
        self.param_names = [name for name, _ in self.model.named_parameters()]
        buffers = dict(self.model.named_buffers())
        self.buffer_names = [name for name, b in buffers.items() if b.is_floating_point()]
        self.int_buffers = {name: b.clone() for name, b in buffers.items() if not b.is_floating_point()}
        tensors = {**dict(self.model.named_parameters()), **{n: buffers[n] for n in self.buffer_names}}
        self.layout = {}  # name -> (offset, shape, strides) inside a flat buffer
        offset = 0
        for name, t in tensors.items():  # each keeps its memory order, if that order is dense (no gaps)
            strides = t.stride() if _dense(t.shape, t.stride()) else torch.empty(t.shape).stride()
            self.layout[name] = (offset, tuple(t.shape), strides)
            offset += t.numel()
        self.dim = offset
        self.num_params = sum(t.numel() for t in self.model.parameters())  # the flat state's first values
        self.weights = torch.empty(self.dim, device=device, dtype=dtype)
        with torch.no_grad():
            for name, t in tensors.items():
                self.view(self.weights, name).copy_(t)
        self.bind(self.weights)

    def signature(self) -> list:
        """[name, shape] of every tensor in the flat state, in its order: what a checkpoint's weights
        mean (a checkpoint of another model is refused by it, not read into the wrong tensors)."""
        return [[name, list(shape)] for name, (_, shape, _) in self.layout.items()]

    def view(self, flat: torch.Tensor, name: str) -> torch.Tensor:
        offset, shape, strides = self.layout[name]
        return flat.as_strided(shape, strides, flat.storage_offset() + offset)

    def logical_order(self) -> torch.Tensor:
        """The flat positions of the values in state_dict order (each tensor row-major): what a value's
        index would be if the memory layouts were the defaults (DP noise is drawn in this order)."""
        positions = torch.arange(self.dim)
        return torch.cat([self.view(positions, name).reshape(-1) for name in self.layout])

    def stacked(self, rows: torch.Tensor) -> tuple[dict, dict]:
        """(params, buffers) of the G clients in `rows` (G, dim), as (G, *shape) views; the integer
        buffers as fresh (G, *shape) copies of their initial values."""
        views = {name: rows.as_strided((rows.shape[0], *shape), (rows.stride(0), *strides),
                                       rows.storage_offset() + offset)
                 for name, (offset, shape, strides) in self.layout.items()}
        ints = {name: b.expand(rows.shape[0], *b.shape).clone() for name, b in self.int_buffers.items()}
        return {n: views[n] for n in self.param_names}, {**{n: views[n] for n in self.buffer_names}, **ints}

    def bind(self, flat: torch.Tensor) -> None:
        """Point the module's parameters and float buffers at `flat`; integer buffers back to their start."""
        params = dict(self.model.named_parameters())
        for name in self.param_names:
            params[name].data = self.view(flat, name)
        for name in self.buffer_names:
            self._owner(name)._buffers[name.rpartition(".")[2]] = self.view(flat, name)
        for name, value in self.int_buffers.items():
            self._owner(name)._buffers[name.rpartition(".")[2]].copy_(value)

    def _owner(self, name: str) -> nn.Module:
        return self.model.get_submodule(name.rpartition(".")[0])


def _dense(shape, strides) -> bool:
    """Whether these strides lay the tensor out without gaps or overlaps (any order of its dimensions):
    numel() values from the offset on hold it. A strided view (a slice with a step) spans more."""
    expected = 1
    for size, stride in sorted(zip(shape, strides), key=lambda d: d[1]):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True
