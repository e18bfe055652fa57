"""The client engine: the local SGD of a round's clients, for any model, on any device.

A worker hands the engine its clients of a round; the engine groups them
into stacks (at most `stack_clients` each: of any sizes, masked, or of
equal sizes for B = ∞ and models with buffers) and
trains each stack from the broadcast weights with one training loop
(`local_sgd`) over one of three step functions:

| device | model | step (module) | stack |
|---|---|---|---|
| CPU | MLP (Flatten, Linear, ReLU) | batched matmuls with a fused SGD step (`engine.mlp`) | ≤ 16 |
| CPU | any other | one client at a time through the module (`engine.loop`) | 1 |
| CUDA | any | `torch.func.vmap` over stacked parameters, replayed from a CUDA graph (`engine.stacked`) | ≤ 128 |

`stack_clients = 1` trains one client at a time anywhere (the reference
path); `N > 1` stacks at most N (through vmap, for a model that is no MLP,
on a CPU too). vmap over CNN clients was 25 % slower per client than one at
a time on one CPU core (docs/performance.md). A model vmap cannot take
(dropout, an operator without a batching rule) is trained one client at a
time, and `describe()` says why.

On a CPU, with the defaults, a client's result does not depend on which
clients share its stack (bitwise, tests/test_engine.py), so results do not
depend on the rank count.
"""
from __future__ import annotations

import torch

from fedmpi.engine.flat import FlatModel
from fedmpi.engine.loop import LoopStep
from fedmpi.engine.loss import correct, count, token_cross_entropy
from fedmpi.engine.mlp import FusedMLPStep, is_mlp
from fedmpi.engine.stacked import GraphedTraining, VmapStep
from fedmpi.errors import FedMPIError

DEFAULT_STACK = {"cpu": 16, "cuda": 128}
EVAL_CHUNK = 500  # test examples per evaluation batch; workers get whole chunks


def local_sgd(step, rows: torch.Tensor, x: torch.Tensor, y: torch.Tensor, orders: torch.Tensor,
              mask: torch.Tensor | None, draws: torch.Tensor | None, batch: int, lr: float, prepare,
              correction: tuple[float, torch.Tensor | None, int] | None = None) -> torch.Tensor:
    """E epochs of minibatch SGD for each of the G clients whose weights are the rows of `rows` (in place).

    x, y: the clients' examples (G, n, ...); orders (G, E, s): each client's order of its examples in
    each epoch; mask (G, E, s): which positions of the orders hold an example (clients of unequal
    sizes stacked: a client's batches are padded to B rows, and its steps run out before the longest
    client's), or None when all do; draws (G, E, n, k): the random numbers of each example's
    augmentation in each epoch, or None; batch 0 is the whole local set (B = ∞). `correction`
    (μ, offset (G, P) or None, P) makes each step w ← w − η (∇f(w) + μ (w − w_start) + offset) on the
    first P values (the parameters), both terms taken at the step's start (FedProx, SCAFFOLD;
    fedmpi.algorithms); a client whose steps have run out does not move. Returns each
    client's summed batch losses (G,) on the device. Capturable in a CUDA graph: no host
    synchronisation, every shape fixed by the inputs.
    """
    g, epochs, span = orders.shape
    b = span if batch == 0 else batch
    clients = torch.arange(g, device=orders.device).unsqueeze(1)
    total = torch.zeros(g, dtype=rows.dtype, device=rows.device)
    if correction:
        mu, offset, p = correction
        params = rows[:, :p]
        anchor = params.clone() if mu else None
    step.begin(rows, lr)
    for e in range(epochs):
        for i in range(0, span, b):
            rows_mask = None if mask is None else mask[:, e, i:i + b]
            if correction:
                d = torch.zeros_like(params) if offset is None else offset.clone()
                if mu:
                    d.add_(params - anchor, alpha=mu)
                if rows_mask is not None:  # a client whose steps have run out does not move
                    d.mul_(rows_mask.any(1, keepdim=True))
            idx = orders[:, e, i:i + b]
            batch_draws = None if draws is None else draws[clients, e, idx]
            total += step(prepare(x[clients, idx], batch_draws), y[clients, idx], rows_mask)
            if correction:
                with torch.no_grad():
                    params.sub_(d, alpha=lr)
    step.end(rows)
    return total


class Engine:
    """Trains one worker's clients of a model (a FlatModel on the worker's device)."""

    def __init__(self, flat: FlatModel, prepare, stack_clients: int, example: tuple[torch.Tensor, torch.Tensor],
                 corrected: bool = False, num_classes: int | None = None):
        """`corrected`: clients train on corrected gradients (FedProx, SCAFFOLD), which need every step's
        parameters in the stack's rows, so the fused MLP step, which keeps its own copies, is not used.
        `num_classes`: the logits each example must get (the federation's classes or vocabulary)."""
        self.flat = flat
        self.prepare = prepare
        self._check(*example, num_classes)
        # Stacks of unequal sizes need masked steps, which BatchNorm's batch statistics would not respect.
        self.masked = not flat.buffer_names
        device = flat.weights.device.type
        self.limit = stack_clients or DEFAULT_STACK.get(device, 16)
        self.why_alone = None
        if self.limit == 1 or (corrected and device == "cpu" and not stack_clients):
            self.step, self.limit = LoopStep(flat), 1
        elif device == "cpu" and is_mlp(flat.model) and not corrected:
            self.step = FusedMLPStep(flat)
        elif device == "cpu" and not stack_clients:
            self.step, self.limit = LoopStep(flat), 1
        else:
            self.step = VmapStep(flat)
            self.why_alone = self._probe(*example)
            if self.why_alone:
                self.step, self.limit = LoopStep(flat), 1
        self.graphed = GraphedTraining(self._local_sgd) if device == "cuda" and isinstance(self.step, VmapStep) \
            else None

    @torch.no_grad()
    def _check(self, x: torch.Tensor, y: torch.Tensor, num_classes: int | None) -> None:
        """The model takes these examples and gives one row of num_classes logits per target, or a
        one-line FedMPIError."""
        self.flat.model.eval()  # in training mode BatchNorm would fold these examples into its statistics
        try:
            logits = self.flat.model(self.prepare(x[:2]))
            why = None
            if logits.shape[:-1] != y[:2].shape:
                why = f"it gives logits of shape {list(logits.shape)} for targets of shape {list(y[:2].shape)}"
            elif num_classes is not None and logits.shape[-1] != num_classes:
                why = (f"it gives {logits.shape[-1]} logits per example, but the federation has {num_classes} "
                       "classes (or a vocabulary of that size)")
        except Exception as e:  # noqa: BLE001 (a user's model may raise anything)
            why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        self.flat.model.train()
        if why:
            raise FedMPIError(f"config field 'model': the model cannot take this federation's examples "
                              f"({tuple(x.shape[1:])}, {x.dtype} as stored): {why}"[:400])

    def _local_sgd(self, rows, x, y, orders, mask, draws, batch, lr, correction=None):
        return local_sgd(self.step, rows, x, y, orders, mask, draws, batch, lr, self.prepare, correction)

    def _probe(self, x: torch.Tensor, y: torch.Tensor) -> str | None:
        """None if the stacked step runs on two clients of these examples, else why not (one line)."""
        x, y = x[:2].expand(2, *x[:2].shape), y[:2].expand(2, *y[:2].shape)
        orders = torch.arange(len(y[0]), device=y.device).expand(2, 1, -1)
        draws = self.prepare.draw(torch.Generator().manual_seed(0), 1, len(y[0]))
        draws = None if draws is None else draws.to(y.device).expand(2, *draws.shape)
        try:
            self._local_sgd(self.flat.weights.repeat(2, 1), x, y, orders, None, draws, 0, 0.0)
        except Exception as e:  # noqa: BLE001 (any failure means: do not stack this model)
            return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
        return None

    def describe(self) -> str:
        how = self.step.name + (", replayed from CUDA graphs" if self.graphed else "")
        if self.limit > 1:
            how += f", up to {self.limit} clients together"
        if self.why_alone:
            how += f" (this model cannot be stacked: {self.why_alone})"
        return how

    def stacks(self, sizes: list[int], batch: int) -> list[list[int]]:
        """The positions of clients with these sizes grouped into stacks of at most `limit`: of any sizes,
        smallest first (masked steps), or, for B = ∞ or models with buffers, of equal sizes."""
        if self.limit > 1 and self.masked and batch:
            order = sorted(range(len(sizes)), key=lambda i: sizes[i])
            return [order[i:i + self.limit] for i in range(0, len(order), self.limit)]
        by_size: dict[int, list[int]] = {}
        for i, n in enumerate(sizes):
            by_size.setdefault(n, []).append(i)
        return [same[i:i + self.limit] for same in by_size.values() for i in range(0, len(same), self.limit)]

    def train(self, start: torch.Tensor, data: list[tuple[torch.Tensor, torch.Tensor]],
              generators: list[torch.Generator], epochs: int, batch: int, lr: float,
              correction: tuple[float, torch.Tensor | None] | None = None):
        """E epochs of minibatch SGD from `start` for each client of one stack (see `stacks`).

        `correction`: (μ, the clients' gradient offsets as rows, or None), see local_sgd. A stacked step of a
        model without buffers always pads a client's batches to B rows (masked), alone or not, so a
        client computes alike in any stack: results do not depend on the rank count.

        Returns their weights as the rows of a (G, dim) tensor and each one's mean batch loss.
        Client k's example order in each epoch is a torch.randperm from its own generator; a
        model trained one client at a time draws its own random numbers (dropout) from torch's
        global generator, seeded from that generator next.
        """
        sizes, device = [len(y) for _, y in data], start.device
        g, n, span = self.shape(sizes, batch)
        padded = self._masked(batch)
        orders = torch.zeros(g, epochs, span, dtype=torch.int64)
        mask = torch.zeros(g, epochs, span, dtype=torch.bool) if padded else None
        for row, (gen, size) in enumerate(zip(generators, sizes)):  # rows past len(data): no examples
            for e in range(epochs):
                orders[row, e, :size] = torch.randperm(size, generator=gen)
            if padded:
                mask[row, :, :size] = True
        orders, mask = orders.to(device), None if mask is None else mask.to(device)
        draws = [self.prepare.draw(gen, epochs, size) for gen, size in zip(generators, sizes)]  # after the orders
        draws = None if draws[0] is None else torch.stack([_pad(d, n, 1) for d in _fill(draws, g)]).to(device)
        if isinstance(self.step, LoopStep):  # dropout & co. draw from (seed, round, client) alone
            torch.manual_seed(int(torch.randint(2**62, (1,), generator=generators[0])))
        x = torch.stack([_pad(x, n) for x, _ in _fill(data, g)]) if g > 1 else data[0][0].unsqueeze(0)
        y = torch.stack([_pad(y, n) for _, y in _fill(data, g)]) if g > 1 else data[0][1].unsqueeze(0)
        rows = start.repeat(g, 1)
        if correction:
            mu, offset = correction
            correction = (mu, None if offset is None else _pad(offset, g), self.flat.num_params)
        if self.graphed:
            try:
                total = self.graphed(rows, x, y, orders, mask, draws, batch, lr, correction)
            except RuntimeError as e:  # a capture that fails: eager from now on, said once
                print(f"fedmpi: warning: CUDA graph capture failed ({str(e).splitlines()[0]}); "
                      "training stacks without graphs", flush=True)
                self.graphed = None
                rows = start.repeat(g, 1)
        if not self.graphed:
            total = self._local_sgd(rows, x, y, orders, mask, draws, batch, lr, correction)
        return rows[:len(data)], [float(t) / (epochs * -(-size // (batch or size)))
                                  for t, size in zip(total.cpu(), sizes)]

    def shape(self, sizes: list[int], batch: int) -> tuple[int, int, int]:
        """(G, n, s) of the stack of clients with these sizes: its rows, examples per row and positions
        per epoch (n, or n padded to whole batches of B rows when masked).

        A vmap stack of masked steps (the CUDA path) is padded further, to a power of two of rows and
        examples of a few sizes (`bucket`): a client's extra steps are fully masked and leave it as it
        was, and a few CUDA graphs, captured once each, then serve every round of unbalanced clients."""
        g, n = len(sizes), max(sizes)
        if self._masked(batch) and isinstance(self.step, VmapStep):
            g, n = min(1 << (g - 1).bit_length(), self.limit), bucket(n)  # rows: a power of two
        return g, n, -(-n // batch) * batch if self._masked(batch) else n

    def _masked(self, batch: int) -> bool:
        """Whether a stack's batches are padded to B rows and masked (stacked steps of a model without
        buffers), which lets clients of any sizes share a stack."""
        return batch > 0 and self.masked and not isinstance(self.step, LoopStep)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list[float], list[float], int]:
        """Per chunk of EVAL_CHUNK examples, the number correct and the summed cross-entropy of the
        weights in flat.weights on (x, y); and the number of targets.

        Chunks, not their totals: the caller adds them into the round's double-double sums, so the
        total does not depend on how many workers share the test set (chunk-aligned slices).
        """
        model = self.flat.model
        model.eval()
        right, loss = [], []
        for i in range(0, len(y), EVAL_CHUNK):
            logits = model(self.prepare(x[i:i + EVAL_CHUNK]))
            loss.append(float(token_cross_entropy(logits, y[i:i + EVAL_CHUNK], reduction="sum")))
            right.append(float(correct(logits, y[i:i + EVAL_CHUNK])))
        model.train()
        return right, loss, count(y)


def bucket(n: int) -> int:
    """n rounded up to 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, ...: powers of two and 1.5 times them, two sizes
    an octave, so at most a third of a padded stack is padding."""
    power = 1 << max(n - 1, 1).bit_length() - 1
    return n if n <= 2 else power * 3 // 2 if n <= power * 3 // 2 else power * 2


def _fill(items: list, g: int) -> list:
    """`items` and, for the rows of a stack beyond them, zero-filled stand-ins of the first (no examples)."""
    return items + [tuple(torch.zeros_like(t) for t in items[0]) if isinstance(items[0], tuple)
                    else torch.zeros_like(items[0])] * (g - len(items))


def _pad(t: torch.Tensor, n: int, dim: int = 0) -> torch.Tensor:
    """t with zeros appended along `dim` up to length n (a stacked client's examples; masked)."""
    if t.shape[dim] == n:
        return t
    shape = list(t.shape)
    shape[dim] = n - t.shape[dim]
    return torch.cat([t, t.new_zeros(shape)], dim)


__all__ = ["Engine", "FlatModel", "local_sgd"]
