"""Open MPI: fedmpi under Debian's Open MPI `mpirun`, as README's "Bring your own MPI" runs it.

mpi4py's wheel (>= 4.1) carries an extension for the MPICH ABI and one for Open MPI's and loads the one
of the libmpi it finds; this venv also holds pip's MPICH, found first, so MPI4PY_LIBMPI names Open
MPI's library (compiling mpi4py against it instead takes 3 to 5 min here). The reference is always
pip's MPICH on one rank: a 3-rank Open MPI job must end in its weights and metrics, also after a
SIGUSR1 to mpirun (which Open MPI forwards to the ranks) and a resume, and a failing rank must end it.
"""
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import client_hook, comparable, final_weights, finish, launch_with, start_with, train, wait_for_round

OPENMPI = shutil.which("mpirun.openmpi")  # Debian's name for it: plain `mpirun` may be the venv's MPICH
pytestmark = pytest.mark.skipif(OPENMPI is None, reason="Open MPI is not installed (Debian: apt-get install "
                                                        "openmpi-bin libopenmpi-dev, as .ci/run does)")
ENV = {"MPI4PY_LIBMPI": "libmpi.so.40", "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
MPIRUN = [OPENMPI, "--allow-run-as-root", "--oversubscribe", "-n", "3"]
FLAGS = ["--rounds", "4", "--fraction", "0.3", "--batch-size", "50", "--threads", "1", "--seed", "5"]
RAISE_ON_RANK_2 = client_hook("rank == 2 and round_ == 2", 'raise RuntimeError("injected failure in client training")')


def job(fed: Path, out: Path, *more: str) -> list[str]:
    return ["--data", str(fed), "--out", str(out), *FLAGS, *more]


@pytest.fixture(scope="module")
def openmpi():
    """The check README gives: the ranks' mpi4py runs on Open MPI's library, not on the venv's MPICH."""
    r = launch_with([OPENMPI, "--allow-run-as-root", "-n", "1"], [], env=ENV, timeout=60,
                    script="from mpi4py import MPI; print(MPI.Get_library_version())")
    assert r.returncode == 0 and r.stdout.startswith("Open MPI v"), r.stdout + r.stderr


@pytest.fixture(scope="module")
def reference(federation, tmp_path_factory):
    """pip's MPICH, `mpiexec -n 1`: the uninterrupted run every Open MPI job must reproduce."""
    out = tmp_path_factory.mktemp("mpich") / "run"
    train(1, federation(clients=10), out, *FLAGS)
    return out


def assert_same_run(out: Path, reference: Path) -> None:
    np.testing.assert_array_equal(final_weights(out), final_weights(reference))
    assert comparable(out) == comparable(reference)


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_open_mpi_trains_to_the_weights_and_metrics_of_mpich_on_one_rank(openmpi, reference, federation, tmp_path):
    out = tmp_path / "run"
    r = launch_with(MPIRUN, job(federation(clients=10), out), env=ENV, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 rank(s), 2 worker(s)," in r.stdout, r.stdout  # one world of 3, not 3 worlds of one
    assert_same_run(out, reference)


def test_a_failing_rank_ends_the_open_mpi_job_within_30_s(openmpi, federation, tmp_path):
    out = tmp_path / "run"
    r = launch_with(MPIRUN, job(federation(clients=10), out), env=ENV, script=RAISE_ON_RANK_2, timeout=120)
    assert r.returncode != 0, r.stdout + r.stderr
    assert r.seconds < 30, f"took {r.seconds:.1f} s"
    assert "fedmpi: rank 2: RuntimeError: injected failure in client training" in r.stderr, r.stderr
    time.sleep(1)
    left = [pid for pid in filter(str.isdigit, os.listdir("/proc")) if str(out).encode() in _cmdline(pid)]
    assert not left, f"processes left: {left}"


def test_sigusr1_to_mpirun_checkpoints_exits_75_and_resume_matches(openmpi, reference, federation, tmp_path):
    """SLURM's --signal=B:USR1@lead reaches the batch script's mpirun; Open MPI passes USR1 on to the ranks
    (its default ess_base_forward_signals), which finish the round, write a checkpoint and exit 75."""
    out = tmp_path / "run"
    proc = start_with(MPIRUN, job(federation(clients=10), out), env=ENV)
    wait_for_round(out, 1, proc)
    sent = time.monotonic()
    proc.send_signal(signal.SIGUSR1)
    stdout, stderr = finish(proc, 60)
    print(f"SIGUSR1 -> exit {proc.returncode} in {time.monotonic() - sent:.2f} s")
    assert proc.returncode == 75, stdout + stderr
    assert "stop requested; checkpoint of round" in stdout, stdout
    assert (out / "checkpoint.h5").exists() and not (out / "model.pt").exists()
    r = launch_with(MPIRUN, job(federation(clients=10), out, "--resume"), env=ENV, timeout=120)
    assert r.returncode == 0 and "resuming at round" in r.stdout, r.stdout + r.stderr
    assert_same_run(out, reference)
