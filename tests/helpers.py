"""Launching real MPI jobs from tests: every launch has a timeout and kills its whole process group."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

PYTHON = sys.executable
MPIEXEC = shutil.which("mpiexec", path=str(Path(PYTHON).parent)) or shutil.which("mpiexec")


def launch(ranks: int, module_args: list[str], timeout: float = 240, env: dict | None = None,
           module: str = "fedmpi", script: str | None = None) -> subprocess.CompletedProcess:
    """Run `python -m fedmpi ...` (ranks = 0: no launcher) or `mpiexec -n ranks ...`; never hangs."""
    target = ["-c", script] if script else ["-m", module]
    cmd = [PYTHON, *target, *module_args]
    if ranks:
        cmd = [MPIEXEC, "-n", str(ranks), *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    start = time.monotonic()
    out, err = finish(proc, timeout)
    result = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    result.seconds = time.monotonic() - start
    return result


def start_job(ranks: int, fed: Path, out: Path, *flags: str) -> subprocess.Popen:
    """A training job left running (ranks = 0: no launcher), in its own session so that a failing test
    can kill mpiexec and its ranks together; wait on it with wait_for_round and finish."""
    cmd = [PYTHON, "-m", "fedmpi", "--data", str(fed), "--out", str(out), *flags]
    if ranks:
        cmd = [MPIEXEC, "-n", str(ranks), *cmd]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """(stdout, stderr) of a process started in its own session; past the timeout its whole process group
    is killed and the test fails with its output: a job that hangs never outlives its test."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{' '.join(map(str, proc.args))} hung for {timeout} s\nstdout:\n{out}\nstderr:\n{err}")


def wait_for_round(out: Path, round_: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until the job writing `out` has recorded round `round_`; fail (its process group killed) if it
    ends first or takes longer than the timeout."""
    from fedmpi.metrics import read_metrics

    deadline = time.monotonic() + timeout
    while not any(r["round"] >= round_ for r in read_metrics(out)):
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            out_, err = proc.communicate()
            raise AssertionError(f"round {round_} not reached (exit {proc.returncode})\n{out_}\n{err}")
        time.sleep(0.02)


def client_hook(when: str, action: str) -> str:
    """A `launch(script=...)` that runs fedmpi with `action` done as a trained client's update is added
    whenever `when` holds (in scope: rank, round_, k, delta): how tests inject faults into a real job."""
    return f"""
import signal, sys
from mpi4py import MPI
import fedmpi.worker
original = fedmpi.worker.Worker._add  # called with each trained client's update Δ_k
def hooked(self, round_, k, slot, delta, *args):
    rank = MPI.COMM_WORLD.rank
    if {when}:
        {action}
    return original(self, round_, k, slot, delta, *args)
fedmpi.worker.Worker._add = hooked
from fedmpi.cli import main
sys.exit(main())
"""


def train(ranks: int, fed: Path, out: Path, *flags: str, timeout: float = 240, **kw) -> subprocess.CompletedProcess:
    """A training job that must succeed; returns its CompletedProcess."""
    r = launch(ranks, ["--data", str(fed), "--out", str(out), *flags], timeout=timeout, **kw)
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r


def final_weights(run_dir: Path) -> np.ndarray:
    """The saved final model as one flat float32 vector (parameter order)."""
    state = torch.load(Path(run_dir) / "model.pt")
    return np.concatenate([v.numpy().ravel() for v in state.values()])
