"""Linear layers whose backward applies the plain SGD step itself: W ← W − η·xᵀg in one GEMM.

FedAvg's clients run plain SGD (no momentum, no weight decay), so a Linear
layer's weight gradient is needed once, to be subtracted. Materialising it
costs as much as computing it: for the CNN's 3136×512 layer at B = 10 the
gradient GEMM writes 6.4 MB that the optimizer then reads back with the
weights. `addmm_` into the weights does both in one pass; with the weights
stored input-major (models.build_model) the forward product is also the
fast orientation. A CNN step at B = 10 is ~10 % shorter (docs/performance.md).
With client momentum or weight decay (engine.local_sgd) the same `addmm_`
adds the gradient into the client's momentum buffer instead (`into`), and
the weights stay as they are until the loop applies the buffer.

The same Function serves one client (x: (B, in), W: (in, out), b: (out,))
and a stack of G clients (x: (G, B, in), W: (G, in, out), b: (G, out),
fedmpi.engine.mlp); each slice of the batched products rounds exactly as the
unbatched one (tests/test_engine.py), so a client's result does not depend
on how it was trained. Parameters updated here get no .grad.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

FEW_ROWS = 32  # batch rows below which the input's gradient is computed transposed (see backward)


class LinearSGD(torch.autograd.Function):
    """y = x·W + b; backward returns the input's gradient and adds α·∇ of W and b into `into` (W and b
    themselves when None: the SGD step, α = −η)."""

    @staticmethod
    def forward(ctx, x, weight, bias, alpha, into):
        ctx.save_for_backward(x, weight, bias)
        ctx.alpha, ctx.into = alpha, into
        if x.dim() == 3:
            return torch.baddbmm(bias.unsqueeze(1), x, weight)
        return torch.addmm(bias, x, weight)

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias = ctx.saved_tensors
        return backward_and_step(grad, x, weight, bias, ctx.alpha, ctx.into, ctx.needs_input_grad[0]), \
            None, None, None, None


def backward_and_step(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, alpha: float,
                      into: tuple[torch.Tensor, torch.Tensor] | None, input_grad: bool = True) -> torch.Tensor | None:
    """LinearSGD's backward: the input's gradient (if `input_grad`, with the weights before the step), then
    α·∇ of W and b added into `into` (W and b themselves when None). engine.mlp calls it without autograd."""
    grad_x = None
    if input_grad:
        # For a few rows (B = 10), W·gᵀ transposed back is the faster GEMM orientation; for
        # many (B ≥ 50) g·Wᵀ is, and its result is contiguous: transposing a 600×3136
        # gradient for the next layer would cost more than the product.
        grad_x = torch.matmul(weight, grad.mT).mT if grad.shape[-2] < FEW_ROWS else torch.matmul(grad, weight.mT)
    target_weight, target_bias = into or (weight, bias)
    with torch.no_grad():
        if x.dim() == 3:
            target_weight.baddbmm_(x.mT, grad, alpha=alpha)
        else:
            target_weight.addmm_(x.mT, grad, alpha=alpha)
        target_bias.add_(grad.sum(-2), alpha=alpha)
    return grad_x


def linear_sgd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, lr: float,
               into: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """x·W + b (W input-major, (in, out) or (G, in, out)); backward steps W and b by −η·∇, or, given `into`
    (tensors shaped as W and b: momentum buffers), adds ∇ into those and leaves W and b as they are."""
    if into is None:
        return LinearSGD.apply(x, weight, bias, -lr, None)
    return LinearSGD.apply(x, weight, bias, 1.0, into)


class FusedLinearLayers:
    """Makes every Linear layer (with a bias) of a model step itself in backward, at `self.lr`, or add its
    gradients into `self.into[layer]` (momentum buffers shaped as its Wᵀ and b) when that is set.

    Only while gradients are recorded: under no_grad (evaluation) the layers compute as usual.
    """

    def __init__(self, model: nn.Module):
        self.lr = 0.0
        self.into: dict[nn.Linear, tuple[torch.Tensor, torch.Tensor]] | None = None
        self.layers = {name: layer for name, layer in model.named_modules()
                       if type(layer) is nn.Linear and layer.bias is not None}
        for layer in self.layers.values():
            layer.forward = functools.partial(self._forward, layer)

    def _forward(self, layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return F.linear(x, layer.weight, layer.bias)
        out = linear_sgd(x.reshape(-1, x.shape[-1]), layer.weight.t(), layer.bias, self.lr,
                         self.into and self.into[layer])
        return out.reshape(*x.shape[:-1], out.shape[-1])
