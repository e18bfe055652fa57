"""FedAvg's math, with no MPI in it: who trains, how a client trains, how updates combine.

Randomness contract (what makes results independent of the rank count and
lets a resumed run continue bit for bit): the clients of round t are drawn
from SeedSequence([0, seed, t]); client k's shuffling in round t from
SeedSequence([1, seed, t, k]). Nothing else is random after model init.
"""
from __future__ import annotations

import numpy as np
import torch

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
