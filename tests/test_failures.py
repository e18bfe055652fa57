"""Fault matrix: a rank that raises or is killed ends the whole job within 30 s, leaves no process
behind, and `--resume` then finishes with the weights and metrics of a run that never failed."""
import os
import re
import signal
import time

import numpy as np
import pytest

from helpers import (client_hook, comparable, final_weights, finish, launch, rank_pids, start_hanging, start_job,
                     train, wait_for_round)

FLAGS = ["--rounds", "8", "--checkpoint-every", "2", "--threads", "1", "--seed", "5"]

RAISE_ON_RANK_2 = client_hook("rank == 2 and round_ == 5", 'raise RuntimeError("injected failure in client training")')
# As SLURM's pre-timeout signal would, while round 2 trains:
STOP_REQUEST_IN_ROUND_2 = client_hook("rank == 1 and round_ == 2", "signal.raise_signal(signal.SIGUSR1)")



@pytest.fixture(scope="module")
def uninterrupted(federation, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    train(0, federation(), out, *FLAGS)  # one process: any rank count gives these weights
    return out


def assert_resumes_to(uninterrupted, fed, out, ranks):
    r = train(ranks, fed, out, *FLAGS, "--resume")
    assert "resuming at round" in r.stdout
    np.testing.assert_array_equal(final_weights(out), final_weights(uninterrupted))
    assert comparable(out) == comparable(uninterrupted)


def test_a_rank_that_raises_ends_the_job_within_30_s_and_resume_matches(uninterrupted, federation, tmp_path):
    out = tmp_path / "run"
    r = launch(4, ["--data", str(federation()), "--out", str(out), *FLAGS], script=RAISE_ON_RANK_2, timeout=120)
    assert r.returncode != 0
    assert r.seconds < 30, f"took {r.seconds:.1f} s"
    assert "fedmpi: rank 2: RuntimeError: injected failure in client training" in r.stderr
    assert_resumes_to(uninterrupted, federation(), out, ranks=3)


def test_a_killed_worker_ends_the_job_within_30_s_without_orphans_and_resume_matches(
        uninterrupted, federation, tmp_path):
    out = tmp_path / "run"
    proc = start_job(3, federation(), out, *FLAGS)
    wait_for_round(out, 3, proc)
    pids = rank_pids(str(out))
    assert sorted(pids) == [0, 1, 2]
    killed = time.monotonic()
    os.kill(pids[2], signal.SIGKILL)
    finish(proc, 30)  # the job must end within 30 s of a worker's death
    print(f"SIGKILL of rank 2 -> job exit in {time.monotonic() - killed:.2f} s")
    assert proc.returncode != 0
    time.sleep(1)
    assert rank_pids(str(out)) == {}, "orphan rank processes left"
    assert_resumes_to(uninterrupted, federation(), out, ranks=4)


@pytest.mark.parametrize("sig, status", [(signal.SIGUSR1, 75), (signal.SIGTERM, 75), (signal.SIGINT, 130)])
def test_a_stop_signal_checkpoints_and_exits_with_a_requeue_status(sig, status, uninterrupted, federation,
                                                                   tmp_path):
    """What SLURM's --signal=B:USR1@lead, preemption (TERM) or Ctrl-C (INT) do to mpiexec."""
    out = tmp_path / "run"
    proc = start_job(3, federation(), out, *FLAGS)
    wait_for_round(out, 2, proc)
    sent = time.monotonic()
    proc.send_signal(sig)
    stdout, stderr = finish(proc, 60)
    print(f"{sig.name} -> exit {proc.returncode} in {time.monotonic() - sent:.2f} s")
    assert proc.returncode == status, stdout + stderr
    assert "stop requested; checkpoint of round" in stdout
    assert (out / "checkpoint.h5").exists() and not (out / "checkpoint.h5.tmp").exists()
    assert not (out / "model.pt").exists()
    assert_resumes_to(uninterrupted, federation(), out, ranks=2)


def test_a_sigterm_after_the_job_has_ended_leaves_its_exit_status(federation, tmp_path):
    """srun --kill-on-bad-exit sends SIGTERM to the ranks still exiting once one rank has exited 75: a rank
    killed by it turned the step's status into a signal's, and SLURM did not requeue the job. Here each
    rank sends itself SIGTERM at exit (an atexit hook, which runs before mpi4py's MPI_Finalize)."""
    (tmp_path / "late_term.py").write_text(
        "import atexit, os, signal\nfrom torch import nn\n"
        "atexit.register(os.kill, os.getpid(), signal.SIGTERM)\n"
        "def net(image_shape, num_classes):\n"
        "    c, h, w = image_shape\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes))\n")
    r = launch(3, ["--data", str(federation(clients=10)), "--out", str(tmp_path / "run"), "--model", "late_term:net",
                   "--rounds", "1", "--threads", "1"], env={"PYTHONPATH": str(tmp_path)}, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "fedmpi: done" in r.stdout


def test_a_stop_request_during_a_round_stops_the_job_after_that_round(uninterrupted, federation, tmp_path):
    """SLURM's lead time (--signal=B:USR1@120) has to cover the round in progress, not two rounds: a
    request that reaches one rank while round 2 trains is answered with the checkpoint of round 2."""
    out = tmp_path / "run"
    r = launch(3, ["--data", str(federation()), "--out", str(out), *FLAGS], script=STOP_REQUEST_IN_ROUND_2,
               timeout=120)
    assert r.returncode == 75, r.stdout + r.stderr
    assert "stop requested; checkpoint of round 2 " in r.stdout, r.stdout
    assert_resumes_to(uninterrupted, federation(), out, ranks=2)


def test_a_stop_signal_during_startup_ends_the_job_at_once_and_a_rerun_starts_afresh(uninterrupted, federation,
                                                                                       tmp_path):
    """SLURM may signal a job that is still importing torch: nothing has been trained, so the job ends
    within seconds, writes nothing, and the requeued job (--resume) simply starts the run."""
    out = tmp_path / "run"
    proc = start_job(3, federation(), out, *FLAGS)
    time.sleep(0.5)
    sent = time.monotonic()
    proc.send_signal(signal.SIGUSR1)
    stdout, stderr = finish(proc, 60)
    assert time.monotonic() - sent < 15, f"took {time.monotonic() - sent:.1f} s"
    assert proc.returncode == 75, stdout + stderr
    assert "during set-up" in stdout + stderr and "nothing was written" in stdout + stderr, stdout + stderr
    assert not out.exists()
    train(3, federation(), out, *FLAGS, "--resume")
    np.testing.assert_array_equal(final_weights(out), final_weights(uninterrupted))
    assert comparable(out) == comparable(uninterrupted)


def assert_ended_naming_rank_2(proc, since, status, expect, out, within=15):
    stdout, stderr = finish(proc, 60)
    seconds = time.monotonic() - since
    assert seconds < within, f"took {seconds:.1f} s"
    assert proc.returncode == status, stdout + stderr
    lines = [line for line in stderr.splitlines() if line.startswith("fedmpi:")]
    assert len(lines) == 1, stderr
    for part in ["(building the model)", *expect]:
        assert part in lines[0], lines[0]
    # rank 2 hangs; on a loaded machine rank 1 may still be importing torch too, and is then named as well
    assert re.search(r"\branks? (\d+, )*2 had not finished it", lines[0]), lines[0]
    assert "Traceback" not in stderr
    assert not out.exists(), "the run folder this job made is left"
    time.sleep(1)
    assert rank_pids(str(out)) == {}, "rank processes left"


def test_a_stop_signal_ends_a_set_up_that_hangs_on_one_rank_within_seconds(federation, tmp_path):
    """A rank stuck in a user's model function ignored SIGTERM; scancel and SLURM's time limit then
    waited for SIGKILL, and nothing said which rank was stuck."""
    out, mark = tmp_path / "run", tmp_path / "mark"
    proc = start_hanging(federation(clients=10), out, mark)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert_ended_naming_rank_2(proc, sent, 75, ["stopped by SIGTERM during set-up"], out)


def test_setup_timeout_ends_a_set_up_that_hangs(federation, tmp_path):
    out, mark = tmp_path / "run", tmp_path / "mark"
    started = time.monotonic()
    proc = start_hanging(federation(clients=10), out, mark, "--setup-timeout", "12")
    assert_ended_naming_rank_2(proc, started, 2, ["setup_timeout = 12 s"], out, within=12 + 8)
