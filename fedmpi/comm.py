"""The MPI layer: roles, node-local placement, the two per-round collectives, aborts.

Nothing here knows about learning. Waiting uses non-blocking collectives
polled with a growing sleep, because MPICH's blocking calls spin a core at
100 % and, with more ranks than cores, idle ranks would steal CPU from the
ranks that train.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

from fedmpi.config import MAX_THREADS
from fedmpi.errors import FedMPIError
from fedmpi.fedavg import BLOCK

# MPICH (pip's wheel, Cray MPICH, Intel MPI read these; other MPIs ignore them): use binomial
# trees for the two per-round collectives. Their default for large messages, scatter + ring
# allgather, takes P steps that each wait for a sleeping rank to poll; measured with 9 ranks
# on 2 cores, the broadcast took 50 ms instead of 4 ms. The user's own setting wins.
os.environ.setdefault("MPIR_CVAR_IBCAST_INTRA_ALGORITHM", "sched_binomial")
os.environ.setdefault("MPIR_CVAR_IREDUCE_INTRA_ALGORITHM", "sched_binomial")
from mpi4py import MPI  # noqa: E402  (initialises MPI, which reads the variables above)

# A waiter sleeps 10 µs, then 1.5x longer each time, up to MAX_SLEEP: a short wait ends
# late by at most half its length, a long one by at most MAX_SLEEP. Each wake-up
# preempts a training rank when ranks fill the cores (a 1 ms poller slowed training
# beside it by 14 %, a 5 ms one by 3 %), but every step of a collective waits for
# its ranks to poll, so the cap cannot be large (docs/performance.md).
MAX_SLEEP = 2e-3
ABORT_GRACE = 0.3  # seconds between a failing rank's last words and its MPI_Abort


def _add_double_doubles(inbuf, inoutbuf, datatype) -> None:
    """inout += in for arrays of (hi, lo) pairs: TwoSum of the his, the los added, then renormalised
    (a block at a time, in scratch rows: fedavg.BLOCK)."""
    a = np.frombuffer(inbuf, dtype=np.float64).reshape(-1, 2)
    b = np.frombuffer(inoutbuf, dtype=np.float64).reshape(-1, 2)
    scratch = np.empty((3, min(len(a), BLOCK)))
    for i in range(0, len(a), BLOCK):
        a_hi, a_lo, b_hi, b_lo = a[i:i + BLOCK, 0], a[i:i + BLOCK, 1], b[i:i + BLOCK, 0], b[i:i + BLOCK, 1]
        s, back, err = scratch[:, :len(a_hi)]
        np.add(a_hi, b_hi, out=s)
        np.subtract(s, a_hi, out=back)
        np.subtract(s, back, out=err)
        np.subtract(a_hi, err, out=err)    # a_hi - (s - back)
        np.subtract(b_hi, back, out=back)
        err += back
        err += a_lo
        err += b_lo
        np.add(s, err, out=b_hi)
        np.subtract(b_hi, s, out=s)
        np.subtract(err, s, out=b_lo)


DOUBLE_DOUBLE = MPI.DOUBLE.Create_contiguous(2).Commit()  # one (hi, lo) pair: reductions never split it
DD_SUM = MPI.Op.Create(_add_double_doubles, commute=True)


class Comm:
    """COMM_WORLD seen as one server (rank 0) and workers (ranks 1..P-1, or rank 0 alone when P = 1).

    A node trains with at most as many workers as it has cores (set_workers):
    further ranks on it stay idle, waiting in the collectives without
    hosting clients, since time-sharing a core makes every client slower and
    a worker training several clients at once trains them faster.
    """

    def __init__(self, world=None):
        self.world = world or MPI.COMM_WORLD
        self.rank = self.world.Get_rank()
        self.size = self.world.Get_size()
        node = self.world.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank = node.Get_rank()
        cores = len(set().union(*node.allgather(os.sched_getaffinity(0))))
        # (node, this rank's place among the node's candidate workers, the node's cores) of every rank
        candidate = self.rank > 0 or self.size == 1  # rank 0 only coordinates when P > 1
        place = node.exscan(int(candidate)) or 0
        self.layout = self.world.allgather((node.bcast(self.rank), place if candidate else None, cores))
        node.Free()
        self.set_workers(0)

    def set_workers(self, per_node: int) -> None:
        """Choose the ranks that host clients: per node, the first `per_node` candidates (0: its cores)."""
        self.workers = [r for r, (_, place, cores) in enumerate(self.layout)
                        if place is not None and place < (per_node or cores)]
        node = self.layout[self.rank][0]
        self.local_workers = sum(self.layout[r][0] == node for r in self.workers)

    @property
    def is_server(self) -> bool:
        return self.rank == 0

    @property
    def is_worker(self) -> bool:
        return self.rank in self.workers

    @property
    def num_workers(self) -> int:
        return len(self.workers)

    @property
    def idle_ranks(self) -> int:
        return self.size - len(self.workers) - (self.size > 1)

    @property
    def worker_index(self) -> int:
        """0..num_workers-1 for workers."""
        return self.workers.index(self.rank)

    def bcast(self, array: np.ndarray) -> float:
        """Broadcast rank 0's array into every rank's array; returns seconds spent."""
        return self.wait(self.world.Ibcast(array, root=0))

    def reduce_sum(self, pairs: np.ndarray) -> float:
        """Sum every rank's (n, 2) float64 array of double-doubles (hi, lo) into rank 0's, in place;
        returns seconds spent."""
        message = [pairs, len(pairs), DOUBLE_DOUBLE]
        send = MPI.IN_PLACE if self.is_server else message
        return self.wait(self.world.Ireduce(send, message if self.is_server else None, op=DD_SUM, root=0))

    @staticmethod
    def wait(request) -> float:
        """Poll a non-blocking MPI request until it completes (sleeping as above); seconds spent."""
        start = time.perf_counter()
        delay = 1e-5
        while not request.Test():
            time.sleep(delay)
            delay = min(delay * 1.5, MAX_SLEEP)
        return time.perf_counter() - start

    def abort(self, code: int) -> None:
        """End every rank of the job now; flushes this rank's output first and gives the launcher a
        moment to pass it on (an abort kills the ranks, and what their pipes still held was lost)."""
        sys.stdout.flush()
        sys.stderr.flush()
        if self.size == 1:
            os._exit(code)
        time.sleep(ABORT_GRACE)
        self.world.Abort(code)


def omp_threads() -> int | None:
    """OMP_NUM_THREADS as a number of threads, None if unset or not a number (OpenMP's own syntax).

    Checked before torch is imported: a value out of range would make its OpenMP runtime warn on
    every rank and torch fail later."""
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if not omp.isdigit():
        return None
    if not 1 <= int(omp) <= MAX_THREADS:
        raise FedMPIError(f"OMP_NUM_THREADS={omp}: must be a whole number from 1 to {MAX_THREADS}")
    return int(omp)


def threads_per_rank(comm: Comm, requested: int) -> int:
    """Torch threads for this rank.

    The request if given, else OMP_NUM_THREADS, else the cores this rank is
    bound to when a launcher (srun --cpus-per-task) pinned it, else the node's
    cores divided by its worker ranks.
    """
    if requested:
        return requested
    if omp_threads():
        return omp_threads()
    cores = os.cpu_count() or 1
    bound = len(os.sched_getaffinity(0))
    if bound < cores:
        return bound
    return max(cores // max(comm.local_workers, 1), 1)
