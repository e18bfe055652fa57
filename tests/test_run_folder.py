"""Run folders never lose a user's data: fedmpi changes only folders it made, and one job at a time.

- A folder that fedmpi did not make (no `.fedmpi-run` marker) is never deleted or changed, whatever
  the flags (the bad-input catalogue checks the refusals byte for byte; here the flags that once
  deleted such a folder).
- Two jobs started together on one --out, with and without --overwrite: exactly one runs, the
  other exits with status 2 and one line, and the folder equals a single run's.
- A job started on a folder another job is training in is refused at once ("in use by another
  job": a job that waited for the lock would have gone on, or been told the folder exists)
  without touching it; a job killed with SIGKILL leaves no stale lock.
No test bounds a time: on a loaded machine startup alone can take seconds.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket

import numpy as np
import pytest

from helpers import (comparable, final_weights, finish, launch, rank_pids, start_hanging, start_job, train,
                     wait_for_round)

FLAGS = ["--rounds", "1", "--batch-size", "0", "--threads", "1", "--seed", "4"]  # one quick round
TRIES = 4



@pytest.fixture(scope="module")
def reference(federation, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    train(0, federation(clients=10), out, *FLAGS)
    return out


def start(fed, out, *flags):
    return start_job(0, fed, out, *FLAGS, *flags)


@pytest.mark.parametrize("overwrite", [False, True])
def test_two_jobs_started_together_on_one_folder_one_runs_the_other_is_refused(overwrite, reference, federation,
                                                                               tmp_path):
    fed = federation(clients=10)
    flags = ["--overwrite"] if overwrite else []
    earlier = tmp_path / "earlier"  # a run in the folder, which both jobs ask to replace
    train(0, fed, earlier, *FLAGS, "--lr", "0.05")
    for i in range(TRIES):
        out = tmp_path / f"try{i}"
        if overwrite:
            shutil.copytree(earlier, out)
        jobs = [start(fed, out, *flags), start(fed, out, *flags)]
        results = []
        for job in jobs:
            stdout, stderr = finish(job, 120)
            results.append((job.returncode, stdout, stderr))
        codes = sorted(code for code, *_ in results)
        assert codes == [0, 2], results
        _, stdout, stderr = next(r for r in results if r[0] == 2)
        assert len(stderr.splitlines()) == 1 and not stdout, results
        assert "in use by another job" in stderr or "exists; pass --resume" in stderr, stderr
        np.testing.assert_array_equal(final_weights(out), final_weights(reference))
        assert comparable(out) == comparable(reference)
        assert (out / "config.toml").read_text() == (reference / "config.toml").read_text().replace(
            str(reference), str(out))


def test_a_job_refused_during_the_first_ones_set_up_names_the_first_job(federation, tmp_path):
    """The lock record of a new run folder was written after set-up, so a second job refused meanwhile
    could not say who held the folder."""
    fed, out = federation(clients=10), tmp_path / "run"
    first = start_hanging(fed, out, tmp_path / "mark")
    try:
        holder = rank_pids(str(out))[0]
        second = launch(0, ["--data", str(fed), "--out", str(out), "--resume"], timeout=60)
        assert second.returncode == 2 and f"pid {holder}," in second.stderr, second.stderr
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.communicate()


def test_a_job_on_a_folder_in_training_is_refused_and_the_training_run_is_unharmed(federation, tmp_path):
    fed = federation()
    out = tmp_path / "run"
    flags = ["--rounds", "6", "--threads", "1", "--seed", "5", "--checkpoint-every", "1"]
    job = start_job(3, fed, out, *flags)
    try:
        wait_for_round(out, 1, job)
        ranks = rank_pids(str(out))
        holder = ranks[0]  # rank 0 holds the lock (not mpiexec, job.pid)
        for pid in ranks.values():  # paused mid-training: it cannot end before the others are refused
            os.kill(pid, signal.SIGSTOP)
        try:
            for extra in (["--overwrite"], ["--resume"], []):
                second = launch(0, ["--data", str(fed), "--out", str(out), *flags, "--lr", "0.05", *extra],
                                timeout=60)
                assert second.returncode == 2, second.stderr
                assert f"in use by another job (host {socket.gethostname()}, pid {holder}," in second.stderr, \
                    second.stderr
        finally:
            for pid in ranks.values():
                os.kill(pid, signal.SIGCONT)
        finish(job, 120)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == 0
    reference = tmp_path / "reference"
    train(3, fed, reference, *flags)
    np.testing.assert_array_equal(final_weights(out), final_weights(reference))
    assert comparable(out) == comparable(reference)


def test_a_killed_job_leaves_no_stale_lock(federation, tmp_path):
    fed = federation(clients=10)
    out = tmp_path / "run"
    job = start(fed, out, "--rounds", "200", "--checkpoint-every", "1")
    wait_for_round(out, 1, job)
    job.kill()
    finish(job, 30)
    r = launch(0, ["--data", str(fed), "--out", str(out), *FLAGS, "--overwrite"], timeout=60)
    assert r.returncode == 0, r.stderr  # a lock left behind would refuse it


def test_resume_and_overwrite_never_delete_a_folder_fedmpi_did_not_make(federation, tmp_path):
    """The defect this marker fixes: a folder with a file named config.toml was deleted by --resume."""
    fed = federation(clients=10)
    folder = tmp_path / "thesis"
    (folder / "src").mkdir(parents=True)
    (folder / "config.toml").write_text('title = "x"\n')
    (folder / "thesis.tex").write_text("months of work\n")
    for flag in ("--resume", "--overwrite"):
        r = launch(0, ["--data", str(fed), "--out", str(folder), *FLAGS, flag], timeout=60)
        assert r.returncode == 2 and "not a fedmpi run folder" in r.stderr, r.stderr
        assert sorted(p.name for p in folder.iterdir()) == ["config.toml", "src", "thesis.tex"]
    assert (folder / "thesis.tex").read_text() == "months of work\n"
