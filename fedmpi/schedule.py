"""Asynchronous FL (FedBuff, Nguyen et al., AISTATS 2022) as a schedule on the virtual clock.

`concurrency` clients train at any moment; each trains its E epochs from the
model it downloaded at its start and finishes after its duration
(fedmpi.system); finished updates fill a buffer of `buffer_size`, and a full
buffer is one server update (a "round": `rounds` counts them), each update
discounted by its staleness τ (server updates since the client's start):
1/√(1 + τ) by default. A finished client is replaced at once by a new one,
which starts from the model after that server update if its finish filled
the buffer.

No event depends on a training result, so the whole order of events is a
function of the seed and the system model, computed alike on every rank: for
each server update, which clients' updates it buffers and from which model
version each started. Training then follows the schedule: at the MPI step of
server update r, the workers train exactly the buffer's clients, each from
its own start version (kept in a `VersionStore` until no client needs it), in
one broadcast and one reduction, so results do not depend on the rank count
and nothing waits on a single client.

Randomness (fedmpi.fedavg's contract): the clients drawn from
SeedSequence([6, seed]), one numpy default_rng for the run: each start draws
rng.integers(K) until the client is not training already, is online in the
`availability_trace` (if any) at the start's virtual time and, with
availability p < 1, then rng.random() < p (else it draws again). When the
trace has no free client online then, the start waits for the trace's next
interval start (at equal times after the finishes); client k's
shuffling in its j-th start of the run (j = 1, 2, ... over all clients) from
SeedSequence([1, seed, j, k]). Ties in finish time go to the earlier start.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np

from fedmpi.errors import FedMPIError
from fedmpi.system import RoundPlan, SystemModel

ASYNC_SAMPLING = 6  # fedmpi.fedavg's SeedSequence streams 0-3, fedmpi.system's 4-5, then this
WAITING = -1  # the client of a start that waits for the trace's next interval


def discount(staleness: str, tau: int) -> float:
    """The weight of an update τ server updates stale: FedBuff's 1/√(1 + τ) ("sqrt"), or 1 ("none")."""
    return 1 / math.sqrt(1 + tau) if staleness == "sqrt" else 1.0


@dataclass
class Buffer:
    clients: list[int]      # in the order they finished
    versions: list[int]     # the model version each started from (w_v: after v server updates)
    starts: list[int]       # each one's start number j (its shuffling's seed)
    time: float             # the virtual time the buffer filled (its server update)


class AsyncSchedule:
    """The buffers of the run's server updates, generated as far as asked (`plan`)."""

    def __init__(self, cfg, system: SystemModel, num_clients: int):
        """`cfg.concurrency` <= `num_clients` (system.read_inputs)."""
        self.cfg, self.system, self.num_clients = cfg, system, num_clients
        self.rng = np.random.default_rng(np.random.SeedSequence([ASYNC_SAMPLING, cfg.seed]))
        self.training: list[tuple[float, int, int, int]] = []  # a heap of (finish, start number, client, version)
        self.busy: set[int] = set()
        self.started, self.version, self.time = 0, 0, 0.0
        self.buffers: list[Buffer] = []
        for _ in range(cfg.concurrency):
            self._start()
        if system.trace is not None:  # a trace that runs dry is one line in set-up, not an error mid-run
            self.buffer(cfg.rounds)

    def _start(self) -> None:
        """A new client, drawn uniformly among those not training and online (`availability`, the trace)."""
        trace = self.system.trace
        if trace is not None:
            free = trace.online(self.time)
            free[list(self.busy)] = False
            if not free.any():
                later = trace.next_start(self.time)
                if later > self.time:  # else no interval comes: the slot stays empty
                    heapq.heappush(self.training, (later, math.inf, WAITING, WAITING))
                return
        k = int(self.rng.integers(self.num_clients))
        while k in self.busy or (trace is not None and not free[k]) or \
                (self.cfg.availability < 1 and self.rng.random() >= self.cfg.availability):
            k = int(self.rng.integers(self.num_clients))
        self.started += 1
        self.busy.add(k)
        heapq.heappush(self.training, (self.time + self.system.duration(k), self.started, k, self.version))

    def _fill(self) -> None:
        buffer = Buffer([], [], [], 0.0)
        while len(buffer.clients) < self.cfg.buffer_size:
            if not self.training:
                raise FedMPIError(f"config field 'availability_trace': {self.cfg.availability_trace} has no client "
                                  f"online after virtual time {self.time:g} s, so server update "
                                  f"{len(self.buffers) + 1} of {self.cfg.rounds} never fills its buffer of "
                                  f"{self.cfg.buffer_size}; extend the trace or lower rounds")
            self.time, start, k, version = heapq.heappop(self.training)
            if k == WAITING:
                self._start()
                continue
            self.busy.discard(k)
            buffer.clients.append(k)
            buffer.versions.append(version)
            buffer.starts.append(start)
            if len(buffer.clients) == self.cfg.buffer_size:
                self.version += 1  # the server update, before the replacement starts
            self._start()
        buffer.time = self.time
        self.buffers.append(buffer)

    def buffer(self, round_: int) -> Buffer:
        while len(self.buffers) < round_:
            self._fill()
        return self.buffers[round_ - 1]

    def plan(self, round_: int | None) -> tuple[np.ndarray, RoundPlan]:
        """Server update t's clients (in finish order) and plan: E epochs each, from their start versions."""
        if round_ is None:
            return np.empty(0, dtype=np.int64), self.system.plan(None, np.empty(0, dtype=np.int64))
        buffer = self.buffer(round_)
        before = self.buffers[round_ - 2].time if round_ > 1 else 0.0
        clients = np.array(buffer.clients, dtype=np.int64)
        full = self.cfg.epochs * self.system.per_epoch[clients]
        return clients, RoundPlan(full, full, buffer.time - before, np.array(buffer.versions), np.array(buffer.starts))

    def needed(self, after: int) -> set[int]:
        """The model versions that server updates after `after` (already generated through it) train from."""
        self.buffer(after)
        later = {v for b in self.buffers[after:] for v in b.versions}
        return later | {version for *_, version in self.training if version != WAITING}


class VersionStore:
    """The model versions that clients still training started from, by version, on every rank (rank 0 puts
    them into checkpoints)."""

    def __init__(self, versions: dict[int, np.ndarray] | None = None):
        self.versions = dict(versions or {})

    def keep(self, version: int, weights: np.ndarray, needed: set[int]) -> None:
        """Keep `weights` as `version` if needed, and forget those no longer needed."""
        if version in needed and version not in self.versions:
            self.versions[version] = weights.copy()
        self.versions = {v: w for v, w in self.versions.items() if v in needed}

    def state(self) -> dict[str, np.ndarray]:
        order = sorted(self.versions)
        return {"async_versions": np.array(order, dtype=np.int64),
                "async_weights": np.stack([self.versions[v] for v in order]) if order else np.zeros((0, 0))}

    @staticmethod
    def from_state(state: dict[str, np.ndarray]) -> "VersionStore":
        versions, weights = state.get("async_versions", []), state.get("async_weights", [])
        return VersionStore({int(v): w for v, w in zip(versions, weights)})
