"""FedAvg's math, with no MPI in it: who trains, how a client trains, how updates combine.

Randomness contract (what makes results independent of the rank count and
lets a resumed run continue bit for bit): the clients of round t are drawn
from SeedSequence([0, seed, t]); client k's shuffling in round t from
SeedSequence([1, seed, t, k]). Nothing else is random after model init.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedmpi.linear_sgd import forward_with_sgd

SAMPLING, CLIENT = 0, 1


def plan_round(seed: int, round_: int, num_clients: int, clients_per_round: int) -> np.ndarray:
    """The sorted ids of the m clients sampled, uniformly without replacement, for round t."""
    rng = np.random.default_rng(np.random.SeedSequence([SAMPLING, seed, round_]))
    return np.sort(rng.choice(num_clients, clients_per_round, replace=False))


def home_worker(client: int, num_workers: int) -> int:
    """The worker that reads client k's shard at start: k mod W."""
    return client % num_workers


def assign_to_workers(sampled: np.ndarray, num_workers: int) -> np.ndarray:
    """Which worker trains each sampled client: its home worker unless that would overload it.

    Every worker gets at most ceil(m / W) clients, so a round waits for no
    straggler that static placement would create (with k mod W alone, 10
    clients on 2 workers split 7/3 as often as 5/5). Clients that must move
    go, in order, to the least-loaded worker; the result depends only on the
    sampled ids and W, never on timing.
    """
    cap = -(-len(sampled) // num_workers)
    load = np.zeros(num_workers, dtype=np.int64)
    owner = np.full(len(sampled), -1, dtype=np.int64)
    for i, k in enumerate(sampled):
        home = home_worker(int(k), num_workers)
        if load[home] < cap:
            owner[i] = home
            load[home] += 1
    for i in np.flatnonzero(owner < 0):
        owner[i] = int(np.argmin(load))
        load[owner[i]] += 1
    return owner


def client_generator(seed: int, round_: int, client: int) -> torch.Generator:
    """The torch generator that shuffles client k's data in round t."""
    state = np.random.SeedSequence([CLIENT, seed, round_, client]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)


class FlatModel:
    """A model whose parameters are views into one flat float32 buffer.

    The broadcast lands in `weights` with one copy and a client's update is
    `weights - w_t`, with no per-parameter gathering. Each parameter keeps
    its own memory format (channels_last for conv weights) inside the buffer,
    so every rank must build the model the same way (models.build_model does).
    """

    def __init__(self, model: nn.Module, device: torch.device):
        if any(b.is_floating_point() for b in model.buffers()):
            raise NotImplementedError("models with float buffers (e.g. BatchNorm) are not supported yet")
        self.model = model.to(device)
        self.params = list(self.model.parameters())
        self.weights = torch.empty(sum(p.numel() for p in self.params), device=device)
        offset = 0
        for p in self.params:
            n = p.numel()
            view = self.weights[offset:offset + n].as_strided(p.shape, p.stride())
            view.copy_(p.detach())
            p.data = view
            offset += n
        self.dim = offset

    @torch.no_grad()
    def sgd_step(self, lr: float) -> None:
        """w ← w − η·∇ for the parameters that have a gradient (Linear layers stepped themselves
        in backward, fedmpi.linear_sgd), then drop the gradients so that the next backward writes
        fresh ones (cheaper than accumulating into zeroed buffers)."""
        params = [p for p in self.params if p.grad is not None]
        if params:
            torch._foreach_add_(params, [p.grad for p in params], alpha=-lr)
        for p in params:
            p.grad = None


class Normalizer:
    """uint8 pixels → (x/255 − mean)/std, done on the device when a batch is formed.

    Written as the textbook formula (not a fused multiply-add) so that it
    rounds exactly as torchvision's ToTensor + Normalize does.
    """

    def __init__(self, mean, std, device):
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(-1, 1, 1)

    def __call__(self, x_uint8: torch.Tensor) -> torch.Tensor:
        x = x_uint8.float().div_(255).sub_(self.mean).div_(self.std)
        return x.contiguous(memory_format=torch.channels_last)


def local_update(flat: FlatModel, x: torch.Tensor, y: torch.Tensor, epochs: int, batch_size: int,
                 lr: float, generator: torch.Generator, normalize: Normalizer) -> float:
    """E epochs of minibatch SGD (B = 0: the whole set) from the current weights; mean batch loss."""
    n = len(y)
    b = n if batch_size == 0 else batch_size
    total = torch.zeros((), device=x.device)
    steps = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(x.device)
        for i in range(0, n, b):
            idx = order[i:i + b]
            loss = F.cross_entropy(forward_with_sgd(flat.model, normalize(x[idx]), lr), y[idx])
            loss.backward()
            flat.sgd_step(lr)
            total += loss.detach()
            steps += 1
    return float(total) / steps


EVAL_CHUNK = 500  # test examples per evaluation batch; workers get whole chunks


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, normalize: Normalizer, batch: int = EVAL_CHUNK):
    """(number correct, summed cross-entropy) of the model on (x, y).

    Each chunk's loss is summed in float32 then added in float64, so with
    chunk-aligned slices the total does not depend on how many workers share the test set.
    """
    correct, loss = 0.0, 0.0
    for i in range(0, len(y), batch):
        logits = model(normalize(x[i:i + batch]))
        loss += float(F.cross_entropy(logits, y[i:i + batch], reduction="sum"))
        correct += float((logits.argmax(1) == y[i:i + batch]).sum())
    return correct, loss


class RoundSums:
    """The one buffer each round reduces, in float64 so that sums do not depend on P.

    Layout: [Σ n_k·Δ_k (dim values) | scalars | one 'bad update' flag per sampled client].
    The evaluation scalars describe the weights that were broadcast this round.
    """

    SCALARS = ("n", "n_loss", "correct", "test_loss", "test_count", "train_seconds", "eval_seconds",
               "requeue_requests", "interrupt_requests")

    def __init__(self, dim: int, clients_per_round: int):
        self.dim = dim
        self.buffer = np.zeros(dim + len(self.SCALARS) + clients_per_round, dtype=np.float64)
        self.delta = torch.from_numpy(self.buffer[:dim])
        self.bad = self.buffer[dim + len(self.SCALARS):]

    def __getitem__(self, name: str) -> float:
        return float(self.buffer[self.dim + self.SCALARS.index(name)])

    def add(self, name: str, value: float) -> None:
        self.buffer[self.dim + self.SCALARS.index(name)] += value


def fedavg_update(weights: np.ndarray, sums: RoundSums) -> None:
    """w_{t+1} = w_t + Σ n_k Δ_k / Σ n_k, computed in float64, stored in place as float32."""
    weights[:] = weights + sums.buffer[:sums.dim] / sums["n"]
