"""The algorithm interface: what a federated algorithm is to fedmpi, with FedAvg as every method's default.

A round is one broadcast and one reduction (docs/extending.md has the whole
picture). Rank 0 fills the broadcast and steps the server; each worker
trains the sampled clients it hosts and adds each client's contribution to
the round's sums, which MPI reduces onto rank 0:

    rank 0   fill_broadcast(extra, sampled)        the round's values after w_t (e.g. SCAFFOLD's c, c_k)
    workers  correction(extra, slots)              how the clients' local SGD steps are changed
             contribute(update, extra, sums)       client k's Δ_k (and more) into the round's sums
    rank 0   aggregate(sums, round_, sampled)      the sums into the averaged update (the server
                                                   optimizer, fedmpi/algorithms/optimizers.py, applies it)
             record(round_)                        what the round's line in metrics.jsonl gains
             state() / load_state(state)           what the checkpoint keeps (server and per-client state)

Everything a worker needs of the server's state rides in the broadcast, so
a client trains on any rank and results do not depend on the rank count;
every value of the sums is a double-double added in any grouping to the
same double, so aggregate() sees the same numbers on 1 or 100 ranks. The
state is float64 on rank 0 and checkpointed whole, so a resumed run
continues bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedmpi.errors import FedMPIError


@dataclass(frozen=True)
class RunInfo:
    """What an algorithm knows of its run when it is made (on every rank)."""

    cfg: object            # the run's RunConfig (lr, epochs, seed, ...)
    num_clients: int       # K
    clients_per_round: int  # m: the round's sampled clients are its slots 0..m-1, in increasing id
    dim: int               # the model's flat values: P parameters, then the float buffers
    num_params: int        # P
    on_server: bool        # this rank is rank 0, the only one that keeps server and per-client state


@dataclass
class ClientUpdate:
    """One sampled client's result of local training, as contribute() gets it on its worker."""

    client: int          # k
    slot: int            # its place among the round's sampled clients, 0..m-1
    delta: np.ndarray    # Δ_k = w_k − w_t, float64, all dim values (parameters first); yours to change
    examples: int        # n_k
    steps: int           # the local SGD steps it took: E·⌈n_k/B⌉, fewer for partial work (fedmpi/system.py)
    lr: float            # the clients' η of the round
    staleness: int | None = None  # asynchronous execution: server updates since the client started; None: sync
    discount: float = 1.0         # asynchronous execution: its staleness weight (1/√(1 + τ): cfg.staleness)


@dataclass(frozen=True)
class Correction:
    """A change to every local step of a stack of clients: on the parameters,
    w ← w − η (∇f(w) + mu·(w − w_t) + offset), both terms at the step's start."""

    mu: float = 0.0                       # a proximal term's weight (FedProx's μ)
    offsets: np.ndarray | None = None     # (clients, P): a constant per client (SCAFFOLD's c − c_k)


class Algorithm:
    """FedAvg (McMahan et al., AISTATS 2017): clients run plain local SGD; the server averages their
    updates weighted by their examples. Subclass it and override what your algorithm changes."""

    title = "FedAvg"          # its name in start lines, result tables and plot titles
    Args = None               # a dataclass of its own settings ([algorithm_args]), or None for none
    scalars: tuple[str, ...] = ()  # names of the extra sums its clients add (sums.add(name, value))
    # Whether DP-FedAvg (algorithms/privacy.py) may wrap it: its clients contribute FedAvg's way (DP then
    # clips Δ_k and weighs every client alike) and nothing it keeps depends on a single client's update.
    dp_compatible = True
    # Whether a client that did fewer local steps than E epochs (a straggler, or cut by the deadline:
    # fedmpi/system.py) still contributes its update (FedProx), or is dropped (FedAvg's default).
    partial_work = False
    # Whether it runs asynchronously (execution = async, FedBuff: fedmpi/schedule.py), where a buffer holds
    # updates of clients that started from different models and nothing is broadcast besides the weights.
    asynchronous = False

    def __init__(self, run: RunInfo, args=None):
        self.run, self.args = run, args
        self.p = run.num_params
        self.broadcast_extra = 0      # values it broadcasts after the weights each round
        self.reduction_extra = 0      # values it reduces after Σ w_k Δ_k; each written by one client only
        self.corrects_gradients = False  # whether correction() returns one (the engine keeps every step)

    # ---- rank 0 -------------------------------------------------------------------------------------

    def fill_broadcast(self, extra: np.ndarray, sampled: np.ndarray) -> None:
        """Write this round's `broadcast_extra` values (in the training dtype) for the clients `sampled`."""

    def aggregate(self, sums, round_: int, sampled: np.ndarray) -> np.ndarray:
        """The round's averaged update (float64, dim values; its sign that of a descent step), from
        the reduced sums: sums.delta_sum(), sums[name] for a scalar, sums.extra for the extra values."""
        return sums.delta_sum() / sums["weight"]

    def record(self, round_: int) -> dict:
        """Numbers the round's record gains (after a finite server step)."""
        return {}

    def state(self) -> dict[str, np.ndarray]:
        """Rank 0's state by name, for the checkpoint."""
        return {}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Take back what state() gave, from a checkpoint."""

    # ---- a worker ---------------------------------------------------------------------------------

    def correction(self, extra: np.ndarray, slots: list[int]) -> Correction | None:
        """How the clients in `slots` (trained together) step, from the broadcast `extra`; None: plain SGD."""
        return None

    def contribute(self, update: ClientUpdate, extra: np.ndarray, sums) -> None:
        """Add client k's update to the round's sums: sums.add_delta(Δ, w) adds w·Δ to Σ, sums.add(name, x)
        a scalar, sums.extra[i] = x one of the extra values (those of this client's slot alone).
        Asynchronous (FedBuff): every buffered update counts alike, discounted by its staleness."""
        if update.staleness is None:
            sums.add_delta(update.delta, update.examples)
            sums.add("weight", update.examples)
        else:
            sums.add_delta(update.delta, update.discount)
            sums.add("weight", 1)


def server_array(what: str, shape: tuple[int, ...]) -> np.ndarray:
    """Zeros of `shape`, float64, for rank 0's state; refused up front, in one line, when this node
    cannot hold them with their checkpoint (built in memory: about 1.75 times the state again),
    instead of failing in numpy or the OOM killer."""
    values = int(np.prod(shape))
    with open("/proc/meminfo") as f:
        available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    need = values * 8 * 2.75
    if need > available:
        raise FedMPIError(f"config field 'algorithm': {what} need {values * 8 / 2**30:.1f} GiB on rank 0, "
                          f"{need / 2**30:.1f} GiB with a checkpoint, but {available / 2**30:.1f} GiB are available "
                          "here; use fewer clients or a smaller model (docs/scaling.md)")
    return np.zeros(shape)
