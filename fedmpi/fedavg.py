"""FedAvg's bookkeeping, with no MPI in it: who trains where, with which randomness, summed how.

Randomness contract (what makes results independent of the rank count and
lets a resumed run continue bit for bit): the clients of round t are drawn
from SeedSequence([0, seed, t]); client k's shuffling in round t from
SeedSequence([1, seed, t, k]); DP's noise of round t from SeedSequence([2,
seed, t]) (fedmpi.algorithms.privacy); the clients of federated evaluation,
once for the run, from SeedSequence([3, seed]); the simulated systems' from
streams 4 and 5 (fedmpi.system), asynchronous execution's from stream 6
(fedmpi.schedule). Nothing else is random after model init.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fedmpi.errors import FedMPIError

if TYPE_CHECKING:
    import torch

    from fedmpi.data import Federation

SAMPLING, CLIENT, EVALUATION = 0, 1, 3  # 2: DP's noise (fedmpi.algorithms.privacy)
EVAL_CHUNK = 500  # test examples per evaluation batch (fedmpi.engine); workers get whole chunks


def plan_round(seed: int, round_: int, num_clients: int, clients_per_round: int) -> np.ndarray:
    """The sorted ids of the m clients sampled, uniformly without replacement, for round t."""
    rng = np.random.default_rng(np.random.SeedSequence([SAMPLING, seed, round_]))
    return np.sort(rng.choice(num_clients, clients_per_round, replace=False))


def plan_evaluation(seed: int, num_clients: int, count: int) -> np.ndarray:
    """The sorted ids of the `count` clients that federated evaluation (eval_clients) evaluates on their own
    test sets, uniformly without replacement, one set for the whole run: every evaluated round measures the
    same clients, so their curves and percentiles compare across rounds (a set drawn anew each round would
    add its own sampling noise to p10..p90), and each worker reads its clients' test sets once."""
    rng = np.random.default_rng(np.random.SeedSequence([EVALUATION, seed]))
    return np.sort(rng.choice(num_clients, count, replace=False))


def home_worker(client: int, num_workers: int, num_clients: int) -> int:
    """The worker that hosts client k: floor(k·W / K), so that a worker's clients are neighbours,
    stored in the same files (a worker of an indexed federation then reads few of them)."""
    return client * num_workers // num_clients


def read_home_shards(fed: Federation, worker_index: int, num_workers: int) -> tuple[dict, tuple]:
    """A worker's home clients {k: (x, y)} and its slice of the test set (whole EVAL_CHUNKs), as numpy
    arrays read (and checked against the manifest) now, before torch is imported: a damaged shard is one
    line within a second. An indexed federation's clients are read when first sampled instead, a file at
    a time, so that start-up does not grow with K (fed.load_client caches the files)."""
    clients = {} if fed.indexed else {k: fed.load_client(k) for k in range(fed.num_clients)
                                      if home_worker(k, num_workers, fed.num_clients) == worker_index}
    return clients, fed.load_test(worker_index, num_workers, EVAL_CHUNK)


def assign_to_workers(sampled: np.ndarray, sizes: np.ndarray, num_workers: int, num_clients: int) -> np.ndarray:
    """Which worker trains each sampled client (of `sizes` examples): balanced by examples, mostly at home.

    A client's cost is its examples, so each worker's share is Σ n_k / W. A
    client stays home while its home's examples stay within that share (or
    the home has none yet); the others go, largest first, to the worker with
    the fewest examples. With equal sizes no worker gets more than ceil(m/W)
    clients (static placement split 10 clients over 2 workers 7/3 as often
    as 5/5). The result depends only on the sampled ids, their sizes and W,
    never on timing, and results do not depend on it.
    """
    share = sizes.sum() / num_workers
    load = np.zeros(num_workers, dtype=np.int64)
    owner = np.full(len(sampled), -1, dtype=np.int64)
    for i, k in enumerate(sampled):
        home = home_worker(int(k), num_workers, num_clients)
        if load[home] == 0 or load[home] + sizes[i] <= share:
            owner[i] = home
            load[home] += sizes[i]
    for i in sorted(np.flatnonzero(owner < 0), key=lambda i: -sizes[i]):
        owner[i] = int(np.argmin(load))
        load[owner[i]] += sizes[i]
    return owner


def client_generator(seed: int, round_: int, client: int) -> torch.Generator:
    """The torch generator that shuffles client k's data in round t."""
    import torch  # here, not at the top: fedmpi.comm imports this module before the OMP_NUM_THREADS check,
    # and libgomp, which torch loads, complains about a bad value before fedmpi can say it in one line
    state = np.random.SeedSequence([CLIENT, seed, round_, client]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)


# Model-sized double-double sums go a block at a time through three block-sized scratch rows: numpy's
# fresh temporaries of the whole model cost more than the arithmetic (2NN, 199,210 values: a client's
# TwoSum 3.3 ms, a reduction's addition 4.6 ms, against 0.2 ms and 0.8 ms; docs/performance.md).
BLOCK = 1 << 15


def two_sum_into(hi: np.ndarray, lo: np.ndarray, x, weight: float = 1.0) -> None:
    """(hi, lo) += weight·x, with hi + lo a double-double: the rounding error of each addition is kept in lo
    (Knuth's TwoSum), so sums of the same addends in any grouping round to the same double."""
    x = np.broadcast_to(x, hi.shape)
    scratch = np.empty((3, min(len(hi), BLOCK)))
    for i in range(0, len(hi), BLOCK):
        h, low = hi[i:i + BLOCK], lo[i:i + BLOCK]
        s, back, y = scratch[:, :len(h)]
        np.multiply(x[i:i + BLOCK], weight, out=y)  # exact for weight 1
        np.add(h, y, out=s)
        np.subtract(s, h, out=back)
        np.subtract(y, back, out=y)        # x - back
        np.subtract(s, back, out=back)
        np.subtract(h, back, out=back)     # hi - (s - back)
        back += y
        low += back
        h[...] = s


class RoundSums:
    """The one buffer each round reduces: every value a double-double (hi, lo), so that sums do not
    depend on how the clients are spread over ranks, in float64 mode too.

    Rows: [Σ w_k·Δ_k (dim values) | the algorithm's extra values | scalars | one 'bad update' flag
    per sampled client | correct and count of each client of federated evaluation (`evaluated`, 0 when
    off; each written by the client's home worker alone, integers: exact)]; columns (hi, lo), summed
    across ranks by comm.Comm.reduce_sum. w_k is n_k,
    or 1 under DP (fedmpi.algorithms). The evaluation scalars describe the weights that were
    broadcast this round. Plain float64 sums of float32 updates were exact; of float64 updates (or
    of DP's clipped ones) they were not, and their grouping showed in the last bit.
    """

    SCALARS = ("n", "n_loss", "weight", "correct", "test_loss", "test_count", "train_seconds", "eval_seconds",
               "requeue_requests", "interrupt_requests")

    def __init__(self, dim: int, extra: int, clients_per_round: int, scalars: tuple[str, ...] = (),
                 evaluated: int = 0):
        """`extra`, `scalars`: the algorithm's values and named sums (fedmpi.algorithms.base); `evaluated`:
        the clients of federated evaluation (fedmpi.fedavg.plan_evaluation)."""
        self.dim = dim
        self.at = dim + extra  # where the scalars start
        clash = set(scalars) & set(self.SCALARS)
        if clash:
            raise FedMPIError(f"config field 'algorithm': its scalars {sorted(clash)} are names fedmpi sums itself")
        self.names = self.SCALARS + tuple(scalars)
        self.buffer = np.zeros((self.at + len(self.names) + clients_per_round + 2 * evaluated, 2))
        self.hi, self.lo = self.buffer[:, 0], self.buffer[:, 1]
        self.extra = self.hi[dim:self.at]  # one writer per value: no rounding to keep
        flags = self.at + len(self.names)
        self.bad = self.hi[flags:flags + clients_per_round]
        self.client_correct = self.hi[flags + clients_per_round:flags + clients_per_round + evaluated]
        self.client_count = self.hi[flags + clients_per_round + evaluated:]

    def add_delta(self, delta: np.ndarray, weight: float) -> None:
        two_sum_into(self.hi[:self.dim], self.lo[:self.dim], delta, weight)

    def delta_sum(self) -> np.ndarray:
        return self.hi[:self.dim] + self.lo[:self.dim]

    def __getitem__(self, name: str) -> float:
        i = self.at + self.names.index(name)
        return float(self.hi[i] + self.lo[i])

    def add(self, name: str, value: float) -> None:
        i = self.at + self.names.index(name)
        two_sum_into(self.hi[i:i + 1], self.lo[i:i + 1], value)
