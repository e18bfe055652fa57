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


def start(ranks: int, args: list[str], env: dict | None = None, module: str = "fedmpi",
          script: str | None = None) -> subprocess.Popen:
    """`python -m module args` (or `python -c script args`) under `mpiexec -n ranks` (ranks = 0: no
    launcher), in its own session, so that a failing test can kill mpiexec and its ranks together."""
    cmd = [PYTHON, *(["-c", script] if script else ["-m", module]), *args]
    if ranks:
        cmd = [MPIEXEC, "-n", str(ranks), *cmd]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, start_new_session=True)


def launch(ranks: int, module_args: list[str], timeout: float = 240, env: dict | None = None,
           module: str = "fedmpi", script: str | None = None) -> subprocess.CompletedProcess:
    """Run `python -m fedmpi ...` (ranks = 0: no launcher) or `mpiexec -n ranks ...`; never hangs."""
    proc = start(ranks, module_args, env, module, script)
    started = time.monotonic()
    out, err = finish(proc, timeout)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    result.seconds = time.monotonic() - started
    return result


def start_job(ranks: int, fed: Path, out: Path, *flags: str) -> subprocess.Popen:
    """A training job left running; wait on it with wait_for_round and finish."""
    return start(ranks, ["--data", str(fed), "--out", str(out), *flags])


def finish(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """(stdout, stderr) of a process from start(); past the timeout its whole process group is killed
    and the test fails with its output: a job that hangs never outlives its test."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{' '.join(map(str, proc.args))} hung for {timeout} s\nstdout:\n{out}\nstderr:\n{err}")


def wait_until(proc: subprocess.Popen, done, what: str, timeout: float = 120) -> None:
    """Poll `done()` while the process from start() runs; fail (its process group killed) if it ends
    first or the timeout passes."""
    deadline = time.monotonic() + timeout
    while not done():
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise AssertionError(f"{what}: not seen (exit {proc.returncode})\n{out}\n{err}")
        time.sleep(0.02)


def wait_for_round(out: Path, round_: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until the job writing `out` has recorded round `round_`."""
    from fedmpi.metrics import read_metrics

    wait_until(proc, lambda: any(r["round"] >= round_ for r in read_metrics(out)), f"round {round_}", timeout)


def client_hook(when: str, action: str) -> str:
    """A `launch(script=...)` that runs fedmpi with `action` done as a trained client's update is added
    whenever `when` holds (in scope: rank, round_, k, delta): how tests inject faults into a real job."""
    return f"""
import signal, sys
from mpi4py import MPI
import fedmpi.worker
original_step = fedmpi.worker.Worker.step  # called with each round's number
original_add = fedmpi.worker.Worker._add  # called with each trained client's update Δ_k
def step(self, weights, extra, round_, *args):
    self.hooked_round = round_
    return original_step(self, weights, extra, round_, *args)
def add(self, k, slot, delta, *args):
    rank, round_ = MPI.COMM_WORLD.rank, self.hooked_round
    if {when}:
        {action}
    return original_add(self, k, slot, delta, *args)
fedmpi.worker.Worker.step, fedmpi.worker.Worker._add = step, add
from fedmpi.cli import main
sys.exit(main(exiting=True))
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


def comparable(run_dir: Path) -> list[dict]:
    """A run's metrics records without their wall-clock fields: what two runs that compute alike share."""
    from fedmpi.metrics import read_metrics

    return [{k: v for k, v in r.items() if k not in ("seconds", "time")} for r in read_metrics(run_dir)]


def rank_pids(marker: str) -> dict[int, int]:
    """{MPI rank: pid} of the running fedmpi ranks whose command line contains marker."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            env = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if marker in cmd and "fedmpi" in cmd and MPIEXEC not in cmd:
            rank = [e.split("=", 1)[1] for e in env if e.startswith("PMI_RANK=")]
            if rank:
                found[int(rank[0])] = int(pid)
    return found


def start_hanging(fed: Path, out: Path, mark: Path, *flags: str) -> subprocess.Popen:
    """A 3-rank job whose set-up hangs: rank 2 never returns from the user's model function
    (tests/user_models.py:sleeps_on_rank_2); returns once rank 2 is in it (it creates `mark`)."""
    env = {"PYTHONPATH": str(Path(__file__).parent), "FEDMPI_TEST_MARK": str(mark)}
    proc = start(3, ["--data", str(fed), "--out", str(out), "--model", "user_models:sleeps_on_rank_2",
                     "--rounds", "1", *flags], env=env)
    wait_until(proc, mark.exists, "rank 2 in the model function", timeout=60)
    return proc


def start_with(launcher: list[str], args: list[str], env: dict | None = None,
               script: str | None = None) -> subprocess.Popen:
    """`python -m fedmpi args` (or `python -c script args`) under any launcher command line (Open MPI's
    mpirun, or mpiexec with emulated hosts), in its own session like start()."""
    cmd = [*launcher, PYTHON, *(["-c", script] if script else ["-m", "fedmpi"]), *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, start_new_session=True)


def launch_with(launcher: list[str], args: list[str], timeout: float = 240, env: dict | None = None,
                script: str | None = None) -> subprocess.CompletedProcess:
    """launch() under any launcher command line (start_with); never hangs."""
    proc = start_with(launcher, args, env, script)
    started = time.monotonic()
    out, err = finish(proc, timeout)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    result.seconds = time.monotonic() - started
    return result


def assert_rank_independent_and_resumable(fed: Path, tmp_path: Path, flags: list[str], rounds: int,
                                          kill_after: int) -> None:
    """`flags` (with --rounds `rounds` and --checkpoint-every 1) on 1 rank and on 3 give the same weights and
    records bit for bit; kill -9 of rank 0 after round `kill_after` and --resume on 2 ranks give them too."""
    train(1, fed, tmp_path / "one", *flags)
    train(3, fed, tmp_path / "full", *flags)
    np.testing.assert_array_equal(final_weights(tmp_path / "one"), final_weights(tmp_path / "full"))
    assert comparable(tmp_path / "one") == comparable(tmp_path / "full")
    out = tmp_path / "killed"
    proc = start_job(3, fed, out, *flags)
    wait_for_round(out, kill_after, proc)
    os.kill(rank_pids(str(out))[0], signal.SIGKILL)
    finish(proc, 60)
    assert len(comparable(out)) < rounds + 1  # rounds 0..T when complete
    assert "resuming at round" in train(2, fed, out, *flags, "--resume").stdout
    np.testing.assert_array_equal(final_weights(out), final_weights(tmp_path / "full"))
    assert comparable(out) == comparable(tmp_path / "full")
