"""Set-up that cannot hang: stages that every rank agrees on, bounded in time, ended by a stop signal.

Before round 1 a rank may fail (a user's model that raises, calls sys.exit or is interrupted),
hang (a model function that never returns, a stalled file system) or be asked to stop (SLURM's
SIGTERM or USR1, Ctrl-C). Set-up therefore runs in stages, each ended by an agreement: every rank
reports to rank 0 whether it passed, and rank 0 answers all, so an error on one rank ends every
rank with one line, and while it waits rank 0 knows which ranks are still working. A watchdog
thread on every rank sees stop signals through `signal.set_wakeup_fd`, also while the main thread
is stuck in a user's function or a blocking call, and ends the job with one line naming the stage
and the ranks that had not finished it: a few seconds after a stop signal, or at `setup_timeout`.
Nothing is written before set-up ends, and a run folder that this job made is removed again.
"""
from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time

import numpy as np

from fedmpi.signals import INTERRUPTED, REQUEUE, STOP_SIGNALS

STOP_GRACE_S = 3.0  # a stop signal gives set-up this long to reach its next agreement ...
BUSY_GRACE_S = 2.0  # ... then a rank still at work ends the job itself, if rank 0 has not named it already
AGREEMENT_TAG = 7100  # point-to-point tags of the agreements (one per stage): no other messages use them


class Startup:
    """This rank's set-up: its current stage, the agreements that end stages, and the watchdog."""

    def __init__(self, stops, timeout_s: float):
        self.stops = stops
        self.timeout_s = timeout_s  # 0 = no limit; the config's setup_timeout once it is read
        self.started = time.monotonic()
        self.stage = "starting MPI"
        self.comm = None     # set once MPI is up
        self.folder = None   # rank 0: the run folder this job claimed, released if set-up ends early
        self.waiting = None  # the stage whose agreement this rank waits in; None while it works
        self.pending = []    # rank 0, in an agreement: the ranks that have not reported yet
        self.signal = None   # (number, monotonic time) of the first stop signal
        self._agreements = 0
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._previous_fd = signal.set_wakeup_fd(self._write)  # a notebook's event loop may have one
        self._done = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name="fedmpi-setup-watchdog", daemon=True)
        self._watchdog.start()

    def begin(self, stage: str) -> None:
        """Name what this rank does now (for the line that ends a set-up that hangs)."""
        self.stage = stage

    def agree(self, error: BaseException | None) -> int | None:
        """End the stage on every rank: None to go on, or the exit status every rank returns with.

        The lowest rank that failed prints its error; a stop signal that reached any rank ends set-up
        here, rank 0 saying so."""
        first, stop = self._exchange(error is not None, self.stops.exit_code)
        if first < self._size():
            if self._rank() == first:
                print(f"fedmpi: error: {describe(error, self.stage, first)}", file=sys.stderr, flush=True)
            return 2
        if stop:
            if self._rank() == 0:
                print(f"fedmpi: stopped by {self._signal_name()} during set-up ({self.stage}); nothing was "
                      f"written (exit status {stop})", flush=True)
            return stop
        return None

    def finish(self) -> None:
        """Set-up is over (or the job ended in it): from now on a stop request ends the job after the
        round in progress. Called again, it does nothing."""
        if self._done.is_set():
            return
        self._done.set()
        signal.set_wakeup_fd(self._previous_fd)
        self._watchdog.join()
        os.close(self._read)
        os.close(self._write)

    # --- the agreement --------------------------------------------------------------------------------

    def _exchange(self, failed: bool, stop: int) -> tuple[int, int]:
        """(lowest failing rank, or the world size if none; highest stop status) over all ranks.

        Non-blocking and polled, so that rank 0 knows who is missing and the watchdog can act."""
        mine = np.array([self._rank() if failed else self._size(), stop], dtype=np.int64)
        if self.comm is None or self.comm.size == 1:
            return int(mine[0]), int(mine[1])
        world, tag = self.comm.world, AGREEMENT_TAG + self._agreements
        self._agreements += 1
        self.waiting = self.stage
        if self.comm.is_server:
            reports = {r: np.empty(2, dtype=np.int64) for r in range(1, self.comm.size)}
            requests = {r: world.Irecv(buf, source=r, tag=tag) for r, buf in reports.items()}
            self.pending = list(requests)
            while self.pending:
                time.sleep(0.001)
                self.pending = [r for r in self.pending if not requests[r].Test()]
            outcome = np.array([min(mine[0], *(b[0] for b in reports.values())),
                                max(mine[1], *(b[1] for b in reports.values()))], dtype=np.int64)
            self.comm.wait(world.Ibcast(outcome, root=0))
        else:
            sent = world.Isend(mine, dest=0, tag=tag)
            outcome = np.empty(2, dtype=np.int64)
            self.comm.wait(world.Ibcast(outcome, root=0))
            sent.Wait()
        self.waiting = None
        return int(outcome[0]), int(outcome[1])

    # --- the watchdog ---------------------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._done.is_set():
            readable, _, _ = select.select([self._read], [], [], 0.1)
            if readable:
                for number in os.read(self._read, 64):
                    if number in STOP_SIGNALS and self.signal is None:
                        self.signal = (number, time.monotonic())
            overdue = self._overdue()
            if overdue and not self._done.is_set():
                self._end(*overdue)

    def _overdue(self) -> tuple[str, int] | None:
        """(the line, the exit status) once this rank should end the job, else None.

        Rank 0 waiting in an agreement names every rank still missing; a rank at work names itself,
        a little later (so that rank 0's fuller line comes first); a worker that has reported waits."""
        waiting = self.waiting is not None
        if waiting and self._rank() != 0:
            return None
        later = 0.0 if waiting else BUSY_GRACE_S + 0.5 * min(self._rank(), 10)
        stage = self.waiting or self.stage
        if waiting:
            missing = self.pending
            who = f"rank{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))}"
        else:
            who = f"rank {self._rank()}"
        now = time.monotonic()
        if self.signal and now >= self.signal[1] + STOP_GRACE_S + later:
            status = INTERRUPTED if self.signal[0] == signal.SIGINT else REQUEUE
            return (f"stopped by {self._signal_name()} during set-up ({stage}): {who} had not finished it "
                    f"{now - self.signal[1]:.0f} s after the signal; nothing was written", status)
        if self.timeout_s and now >= self.started + self.timeout_s + later:
            return (f"set-up took longer than setup_timeout = {self.timeout_s:g} s ({stage}): {who} had not "
                    "finished it; nothing was written; raise setup_timeout if set-up needs longer", 2)
        return None

    def _end(self, line: str, status: int) -> None:
        print(f"fedmpi: error: {line} (exit status {status})", file=sys.stderr, flush=True)
        if self.folder is not None:
            self.folder.release_unused()
        if self.comm is not None:
            self.comm.abort(status)
        from mpi4py import MPI  # MPI is still starting: end this process, the launcher ends the others

        if MPI.Is_initialized() and MPI.COMM_WORLD.Get_size() > 1:
            MPI.COMM_WORLD.Abort(status)
        os._exit(status)

    def _signal_name(self) -> str:
        return signal.Signals(self.signal[0]).name if self.signal else "a stop signal"

    def _rank(self) -> int:
        return self.comm.rank if self.comm else 0

    def _size(self) -> int:
        return self.comm.size if self.comm else 1


def describe(error: BaseException, stage: str, rank: int) -> str:
    """The one-line message of a set-up error: the user's to fix, a request to stop, or a bug.

    Besides FedMPIError, an OSError about a named path (not a directory, permission denied, ...) is the
    user's to fix, and its path and reason say all there is to say. SystemExit and KeyboardInterrupt
    (from a user's module) are named with the rank and stage. Anything else is a bug: its traceback
    is printed first."""
    import traceback

    from fedmpi.errors import FedMPIError

    if isinstance(error, FedMPIError):
        return str(error)
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    if not isinstance(error, Exception):
        return f"rank {rank} stopped while {stage}: {type(error).__name__}" + (f": {error}" if str(error) else "")
    traceback.print_exception(error)
    return str(error) or type(error).__name__
