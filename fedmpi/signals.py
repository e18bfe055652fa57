"""Stop requests: SIGTERM / SIGUSR1 (SLURM's pre-timeout or preemption signal) and Ctrl-C.

A handler only records the request; every rank reports it in the reduction
that ends the round in progress, so the job finishes that round, writes a
checkpoint and exits with REQUEUE (75, EX_TEMPFAIL: "try again"), or
INTERRUPTED (130) for Ctrl-C. A second Ctrl-C stops at once.
"""
from __future__ import annotations

import signal

REQUEUE = 75
INTERRUPTED = 130
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StopRequests:
    def __init__(self):
        self.exit_code = 0
        self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}

    def restore(self) -> None:
        """The handlers from before (a notebook's Ctrl-C interrupts it again once the job is over)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def ignore(self) -> None:
        """Ignore SIGTERM and SIGUSR1 from here to the process's exit: the job is over and its status agreed.
        srun --kill-on-bad-exit sends SIGTERM to the ranks still exiting once one rank has exited 75
        (or 3); killed by it, they would turn that status into a signal's and the job would not requeue.
        Ctrl-C gets its handler from before back, so that it still ends a process stuck in its exit."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if sig == signal.SIGINT else signal.SIG_IGN)

    def _handle(self, signum, frame):
        if signum == signal.SIGINT:
            if self.exit_code == INTERRUPTED:
                raise KeyboardInterrupt
            self.exit_code = INTERRUPTED
        elif not self.exit_code:
            self.exit_code = REQUEUE
