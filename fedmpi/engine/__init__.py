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

Every step takes the clients' momentum and weight decay (torch.optim.SGD's,
`Rule`): it then adds its gradients into the clients' momentum buffers, and
`local_sgd` applies them (docs/architecture.md).

On a CPU, with the defaults, a client's result does not depend on which
clients share its stack (bitwise, tests/test_engine.py), so results do not
depend on the rank count.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from fedmpi.engine.flat import FlatModel
from fedmpi.engine.loop import LoopStep
from fedmpi.engine.loss import correct, count, token_cross_entropy
from fedmpi.engine.mlp import FusedMLPStep, is_mlp
from fedmpi.engine.stacked import GraphedTraining, VmapStep
from fedmpi.errors import FedMPIError
from fedmpi.fedavg import EVAL_CHUNK

DEFAULT_STACK = {"cpu": 16, "cuda": 128}


class Rule(NamedTuple):
    """How a client's step moves its first `p` flat values (its parameters), beyond w ← w − η ∇f(w).

    Per step, d = ∇f(w) + μ (w − w_start) + offset + λ w, the terms after ∇f taken at the step's start
    (FedProx's μ, SCAFFOLD's offset c − c_k (G, p): fedmpi.algorithms; weight decay λ on every
    parameter, biases too, not on buffers); then, as torch.optim.SGD (no dampening, no Nesterov):
    v ← ρ v + d, w ← w − η v with momentum ρ, else w ← w − η d. v is zero when a client starts a
    round: client state is not kept across rounds.
    """
    p: int
    mu: float = 0.0
    offset: torch.Tensor | None = None
    momentum: float = 0.0
    weight_decay: float = 0.0


def local_sgd(step, rows: torch.Tensor, x: torch.Tensor, y: torch.Tensor, orders: torch.Tensor,
              mask: torch.Tensor | None, draws: torch.Tensor | None, batch: int, lr: float, prepare,
              rule: Rule | None = None, limit: int | None = None) -> torch.Tensor:
    """E epochs of minibatch SGD for each of the G clients whose weights are the rows of `rows` (in place).

    x, y: the clients' examples (G, n, ...); orders (G, E, s): each client's order of its examples in
    each epoch; mask (G, E, s): which positions of the orders hold an example (clients of unequal
    sizes stacked: a client's batches are padded to B rows, and its steps run out before the longest
    client's), or None when all do; draws (G, E, n, k): the random numbers of each example's
    augmentation in each epoch, or None; batch 0 is the whole local set (B = ∞). `rule` (Rule, None:
    plain SGD) adds FedProx's and SCAFFOLD's corrections, weight decay and momentum to each step; a
    client whose steps have run out does not move. Plain SGD, and corrections alone, let the step
    move the weights itself (the fused steps), the corrections subtracted after it, so FedAvg,
    FedProx and SCAFFOLD compute as they did before momentum existed, bit for bit; with momentum or
    weight decay the step adds ∇f into the clients' momentum buffers instead (step.begin's third
    argument), and Momentum applies them. `limit`: the stack's first that many steps only (a client's
    partial work, fedmpi.system; a masked stack stops its clients by the mask instead). Returns each
    client's summed batch losses (G,) on the device. Capturable in a CUDA graph: no host
    synchronisation, every shape fixed by the inputs.
    """
    g, epochs, span = orders.shape
    b = span if batch == 0 else batch
    clients = torch.arange(g, device=orders.device).unsqueeze(1)
    total = torch.zeros(g, dtype=rows.dtype, device=rows.device)
    given, momentum = rows, None
    if rule and (rule.momentum or rule.weight_decay):
        momentum = Momentum(rule, given, lr)
        rows = _aligned_zeros(given).copy_(given)
    if rule:
        params = rows[:, :rule.p]
        anchor = params.clone() if rule.mu else None
    step.begin(rows, lr, momentum and momentum.buffers)
    for e, i in [(e, i) for e in range(epochs) for i in range(0, span, b)][:limit]:
        rows_mask = None if mask is None else mask[:, e, i:i + b]
        if rule:
            active = None if rows_mask is None else rows_mask.any(1, keepdim=True)  # has an example here
            d = _corrections(rule, params, anchor, active)
            if momentum:
                momentum.before(params, d, active)
        idx = orders[:, e, i:i + b]
        batch_draws = None if draws is None else draws[clients, e, idx]
        total += step(prepare(x[clients, idx], batch_draws), y[clients, idx], rows_mask)  # v += ∇f, or a step
        if rule:
            with torch.no_grad():
                if momentum:
                    momentum.after(params)
                else:
                    params.sub_(d, alpha=lr)
    step.end(rows)
    if momentum:
        given.copy_(rows)
    return total


class Momentum:
    """The G clients' momentum buffers v and torch.optim.SGD's update around a step that adds ∇f into
    them: v ← ρ v + λ w + corrections before it, w ← w − η v after it (the same sum as torch's
    v ← ρ v + (∇f + λ w), in another order). A client without an example in the step keeps its v
    and w: its factors are 1, 0 and 0 instead of ρ, λ and −η, per row, so no pass over the values
    is spent on masks (a stack of 5 2NN clients: 0.3 ms of such passes a step instead of 1.3 ms).
    """

    def __init__(self, rule: Rule, rows: torch.Tensor, lr: float):
        self.buffers = _aligned_zeros(rows)  # (G, dim) like the rows, for the steps' views; v: the parameters'
        self.v = self.buffers[:, :rule.p]
        self.rule = rule
        # as tensors of v's dtype (torch.where would make Python numbers float32); no host sync (CUDA graphs)
        self.rho, self.decay, self.step = (self.v.new_full((), x) for x in (rule.momentum, rule.weight_decay, -lr))
        self.everyone = torch.ones(rows.shape[0], 1, dtype=torch.bool, device=rows.device)

    def before(self, params: torch.Tensor, corrections: torch.Tensor | None, active: torch.Tensor | None) -> None:
        active = self.everyone if active is None else active
        self.eta = torch.where(active, self.step, 0.0)
        if self.rule.momentum:
            self.v.mul_(torch.where(active, self.rho, 1.0))
            if self.rule.weight_decay:
                self.v.addcmul_(params, torch.where(active, self.decay, 0.0))
        else:  # weight decay alone: v ← λ w
            torch.mul(params, torch.where(active, self.decay, 0.0), out=self.v)
        if corrections is not None:  # 0 where a client has no example
            self.v.add_(corrections)

    def after(self, params: torch.Tensor) -> None:
        params.addcmul_(self.v, self.eta)


def _aligned_zeros(rows: torch.Tensor) -> torch.Tensor:
    """Zeros shaped as `rows` (G, dim), each row starting on a 64-byte boundary as a lone client's fresh
    tensor does. The stacked MLP's batched products read the weights from the rows and add the
    gradients into the momentum buffers; in float32 they round differently where a row (of either)
    starts off such a boundary (measured: rows 1 and 3 of a 2NN stack of 4, whose rows of 199,210
    values start 8 bytes off), so a client's numbers would depend on its row in the stack, and
    results on the rank count. The plain steps train in their own contiguous copies (engine.mlp)."""
    g, dim = rows.shape
    per_line = 64 // rows.element_size()
    return torch.zeros(g, -(-dim // per_line) * per_line, dtype=rows.dtype, device=rows.device)[:, :dim]


def _corrections(rule: Rule, params: torch.Tensor, anchor: torch.Tensor | None,
                 active: torch.Tensor | None) -> torch.Tensor | None:
    """offset + μ (w − w_start) at a step's start, 0 for clients without an example in the step (`active`
    False); None when the rule has neither."""
    if rule.offset is None and not rule.mu:
        return None
    d = torch.zeros_like(params) if rule.offset is None else rule.offset.clone()
    if rule.mu:
        d.add_(params - anchor, alpha=rule.mu)
    if active is not None:  # a client whose steps have run out does not move
        d.mul_(active)
    return d


class Engine:
    """Trains one worker's clients of a model (a FlatModel on the worker's device)."""

    def __init__(self, flat: FlatModel, prepare, stack_clients: int, example: tuple[torch.Tensor, torch.Tensor],
                 corrected: bool = False, num_classes: int | None = None, momentum: float = 0.0,
                 weight_decay: float = 0.0):
        """`corrected`: clients train on corrected gradients (FedProx, SCAFFOLD), which need every step's
        parameters in the stack's rows, so the fused MLP step, which keeps its own copies, is not used.
        `num_classes`: the logits each example must get (the federation's classes or vocabulary).
        `momentum`, `weight_decay`: the clients' SGD momentum ρ and weight decay λ (Rule), on every
        step (each takes them: its gradients go into the clients' momentum buffers)."""
        self.flat = flat
        self.prepare = prepare
        self.momentum, self.weight_decay = momentum, weight_decay
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

    def _local_sgd(self, rows, x, y, orders, mask, draws, batch, lr, rule=None, limit=None):
        return local_sgd(self.step, rows, x, y, orders, mask, draws, batch, lr, self.prepare, rule, limit)

    def _rule(self, correction: tuple[float, torch.Tensor | None] | None, g: int) -> Rule | None:
        """The Rule of a stack of G rows from the algorithm's correction (μ, offsets or None) and the
        engine's momentum and weight decay; None for plain SGD."""
        if not (correction or self.momentum or self.weight_decay):
            return None
        mu, offset = correction or (0.0, None)
        return Rule(self.flat.num_params, mu, None if offset is None else _pad(offset, g), self.momentum,
                    self.weight_decay)

    def _probe(self, x: torch.Tensor, y: torch.Tensor) -> str | None:
        """None if the stacked step runs on two clients of these examples, else why not (one line)."""
        x, y = x[:2].expand(2, *x[:2].shape), y[:2].expand(2, *y[:2].shape)
        orders = torch.arange(len(y[0]), device=y.device).expand(2, 1, -1)
        draws = self.prepare.draw(torch.Generator().manual_seed(0), 1, len(y[0]))
        draws = None if draws is None else draws.to(y.device).expand(2, *draws.shape)
        try:
            self._local_sgd(self.flat.weights.repeat(2, 1), x, y, orders, None, draws, 0, 0.0, self._rule(None, 2))
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

    def stacks(self, sizes: list[int], batch: int, steps: list[int | None] | None = None) -> list[list[int]]:
        """The positions of clients with these sizes grouped into stacks of at most `limit`: of any sizes,
        smallest first (masked steps), or, for B = ∞ or models with buffers, of equal sizes and equal
        `steps` (each client's most local steps, None: E epochs; see `train`)."""
        if self.limit > 1 and self.masked and batch:
            order = sorted(range(len(sizes)), key=lambda i: sizes[i])
            return [order[i:i + self.limit] for i in range(0, len(order), self.limit)]
        alike: dict[tuple, list[int]] = {}
        for i, n in enumerate(sizes):
            alike.setdefault((n, steps and steps[i]), []).append(i)
        return [same[i:i + self.limit] for same in alike.values() for i in range(0, len(same), self.limit)]

    def train(self, start: torch.Tensor, data: list[tuple[torch.Tensor, torch.Tensor]],
              generators: list[torch.Generator], epochs: int, batch: int, lr: float,
              correction: tuple[float, torch.Tensor | None] | None = None, steps: list[int | None] | None = None):
        """E epochs of minibatch SGD from `start` for each client of one stack (see `stacks`).

        `steps`: each client's most local steps (its partial work, fedmpi.system; None: all of E
        epochs'), its first that many in the order of E whole epochs; masked stacks stop a client by
        its mask, the others hold clients of equal steps and stop early.

        `correction`: (μ, the clients' gradient offsets as rows, or None), see Rule; the engine adds its
        momentum and weight decay. A stacked step of a model without buffers always pads a client's
        batches to B rows (masked), alone or not, so a client computes alike in any stack: results do
        not depend on the rank count.

        Returns their weights as the rows of a (G, dim) tensor and each one's mean batch loss.
        Client k's example order in each epoch is a torch.randperm from its own generator; a
        model trained one client at a time draws its own random numbers (dropout) from torch's
        global generator, seeded from that generator next.
        """
        sizes, device = [len(y) for _, y in data], start.device
        per_epoch = [-(-size // (batch or size)) for size in sizes]
        steps = [epochs * s if not steps or steps[i] is None else min(steps[i], epochs * s)
                 for i, s in enumerate(per_epoch)]
        g, n, span = self.shape(sizes, batch)
        padded = self._masked(batch)
        orders = torch.zeros(g, epochs, span, dtype=torch.int64)
        mask = torch.zeros(g, epochs, span, dtype=torch.bool) if padded else None
        for row, (gen, size) in enumerate(zip(generators, sizes)):  # rows past len(data): no examples
            for e in range(epochs):
                orders[row, e, :size] = torch.randperm(size, generator=gen)
                if padded:  # the epoch's steps within the client's `steps`, B examples each
                    mask[row, e, :min(size, max(steps[row] - e * per_epoch[row], 0) * batch)] = True
        limit = None if padded or steps[0] == epochs * per_epoch[0] else steps[0]  # alike in the stack
        orders, mask = orders.to(device), None if mask is None else mask.to(device)
        draws = [self.prepare.draw(gen, epochs, size) for gen, size in zip(generators, sizes)]  # after the orders
        draws = None if draws[0] is None else torch.stack([_pad(d, n, 1) for d in _fill(draws, g)]).to(device)
        if isinstance(self.step, LoopStep):  # dropout & co. draw from (seed, round, client) alone
            torch.manual_seed(int(torch.randint(2**62, (1,), generator=generators[0])))
        x = torch.stack([_pad(x, n) for x, _ in _fill(data, g)]) if g > 1 else data[0][0].unsqueeze(0)
        y = torch.stack([_pad(y, n) for _, y in _fill(data, g)]) if g > 1 else data[0][1].unsqueeze(0)
        rows = start.repeat(g, 1)
        rule = self._rule(correction, g)
        if self.graphed:
            try:
                total = self.graphed(rows, x, y, orders, mask, draws, batch, lr, rule, limit)
            except RuntimeError as e:  # a capture that fails: eager from now on, said once
                print(f"fedmpi: warning: CUDA graph capture failed ({str(e).splitlines()[0]}); "
                      "training stacks without graphs", flush=True)
                self.graphed = None
                rows = start.repeat(g, 1)
        if not self.graphed:
            total = self._local_sgd(rows, x, y, orders, mask, draws, batch, lr, rule, limit)
        return rows[:len(data)], [float(t) / s for t, s in zip(total.cpu(), steps)]

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


__all__ = ["Engine", "FlatModel", "Rule", "local_sgd"]
