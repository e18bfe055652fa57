"""`python -m fedmpi.sweep`: a sweep file expands to named runs, each run is the same job as a direct
`python -m fedmpi` of its fields, and the sweep is rerunnable (complete runs skipped, interrupted ones
resumed, a failed run does not stop the others); mistakes in the sweep file are one-line errors.

The reference for every sweep run is a direct `mpiexec -n 2 python -m fedmpi --config FILE` of a
config written by the test itself (not the sweep's own plan file): its final weights must be equal
bit for bit. Run names are spelled out by hand from the sweep file's documented naming scheme.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import tomli_w

from fedmpi.metrics import read_metrics
from helpers import MPIEXEC, PYTHON, comparable, final_weights, launch, rank_pids

TIMEOUT_S = 240  # only guards against a hang
# A tiny 2NN: federation() has 100 clients, C = 0.02 trains 2 of them (600 examples each) per round.
BASE = {"model": "2nn", "fraction": 0.02, "epochs": 1, "batch_size": 50, "rounds": 3, "seed": 1,
        "threads": 1}
LRS = [0.05, 0.1]
ERROR_LINE = re.compile(r"^fedmpi\.sweep: error: ")


def sweep(*args, timeout: float = TIMEOUT_S):
    """`python -m fedmpi.sweep ARGS` (no launcher around it; it starts its own jobs)."""
    return launch(0, [str(a) for a in args], module="fedmpi.sweep", timeout=timeout)


def write_sweep(path: Path, out: Path, base: dict, grid: dict | None = None, rows: list | None = None,
                **top) -> Path:
    spec = {"out": str(out), **top, "base": base}
    if grid:
        spec["grid"] = grid
    if rows:
        spec["rows"] = rows
    path.write_text(tomli_w.dumps(spec))
    return path


def direct_run(fields: dict, out: Path, config: Path, *flags: str):
    """The reference: `mpiexec -n 2 python -m fedmpi --config CONFIG`, CONFIG written here from fields."""
    config.write_text(tomli_w.dumps({**fields, "out": str(out)}))
    r = launch(2, ["--config", str(config), *flags], timeout=TIMEOUT_S)
    assert r.returncode == 0, f"direct run failed: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def listing(sweep_file: Path) -> list[list[str]]:
    r = sweep(sweep_file, "--list", timeout=60)
    assert r.returncode == 0 and not r.stderr, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return [line.split("\t") for line in r.stdout.splitlines()]


# ---- names ---------------------------------------------------------------------------------------

def test_list_names_grid_points_and_rows_crossed_with_the_grid(tmp_path):
    base = {**BASE, "data": "/nowhere/mnist-iid-100"}
    out = tmp_path / "out"
    grid_only = listing(write_sweep(tmp_path / "a.toml", out, base, grid={"lr": [0.05, 0.1]}))
    assert grid_only == [["lr0.05", "new", f"{out}/lr0.05"], ["lr0.1", "new", f"{out}/lr0.1"]]

    rows = [{"epochs": 1, "batch_size": 10}, {"epochs": 5, "batch_size": "inf"}]
    crossed = listing(write_sweep(tmp_path / "b.toml", out, base, grid={"lr": [0.05, 0.1]}, rows=rows))
    assert sorted(name for name, _, _ in crossed) == \
        ["E1_B10_lr0.05", "E1_B10_lr0.1", "E5_Binf_lr0.05", "E5_Binf_lr0.1"]
    assert all(state == "new" and folder == f"{out}/{name}" for name, state, folder in crossed)

    # A row's own list replaces the grid's for that row (a learning-rate grid per table row).
    own = [{"epochs": 1, "lr": [0.1, 0.2]}, {"epochs": 5}]
    per_row = listing(write_sweep(tmp_path / "c.toml", out, base, grid={"lr": [0.05]}, rows=own))
    assert sorted(name for name, _, _ in per_row) == ["E1_lr0.1", "E1_lr0.2", "E5_lr0.05"]

    # Other labels: C for fraction, seed, the data folder's name, key=value for the rest.
    rows = [{"data": "/x/mnist-iid-100"}, {"data": "/y/mnist-shards-100"}]
    other = listing(write_sweep(tmp_path / "d.toml", out, base, rows=rows,
                                grid={"fraction": [0.1], "seed": [0, 1], "on_bad_update": ["skip"]}))
    assert sorted(name for name, _, _ in other) == [
        "mnist-iid-100_seed0", "mnist-iid-100_seed1", "mnist-shards-100_seed0", "mnist-shards-100_seed1"]
    varied = listing(write_sweep(tmp_path / "e.toml", out, base, grid={"on_bad_update": ["abort", "skip"],
                                                                      "fraction": [0.1, 0.2]}))
    assert sorted(name for name, _, _ in varied) == [
        "C0.1_on_bad_update=abort", "C0.1_on_bad_update=skip", "C0.2_on_bad_update=abort",
        "C0.2_on_bad_update=skip"]
    # Fields that do not change the result (rounds, threads, ...) are named only where needed.
    by_rounds = listing(write_sweep(tmp_path / "f.toml", out, base, grid={"rounds": [3, 6], "lr": [0.1, 0.2]}))
    assert sorted(name for name, _, _ in by_rounds) == [
        "lr0.1_rounds=3", "lr0.1_rounds=6", "lr0.2_rounds=3", "lr0.2_rounds=6"]
    assert not out.exists()  # --list runs and writes nothing


def test_an_algorithms_own_setting_in_base_goes_to_that_algorithms_runs_only(tmp_path):
    """prox_mu in [base] with a grid over algorithms: it was refused for the FedAvg runs."""
    from fedmpi.sweep import load_sweep

    spec = write_sweep(tmp_path / "s.toml", tmp_path / "out", {**BASE, "data": "fed", "prox_mu": 0.01},
                       grid={"algorithm": ["fedavg", "fedprox"]})
    _, runs = load_sweep(str(spec))
    assert {run.name: run.config["prox_mu"] for run in runs} == {"fedavg": 0.0, "fedprox_mu0.01": 0.01}


# ---- running -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def swept(federation, tmp_path_factory):
    """A 2-run sweep (lr grid, `ranks = 2` in the file) where run lr0.1 was interrupted after round 1,
    and direct runs of both configs to the end as the reference."""
    d = tmp_path_factory.mktemp("sweep")
    fed = federation()
    out = d / "out"
    sweep_file = write_sweep(d / "sweep.toml", out, {**BASE, "data": str(fed)}, grid={"lr": LRS}, ranks=2)
    fields = {name: {**BASE, "data": str(fed), "lr": lr} for name, lr in zip(["lr0.05", "lr0.1"], LRS)}
    # The interrupted run: the same config stopped after round 1, written where the sweep keeps it.
    direct_run(fields["lr0.1"], out / "lr0.1", d / "interrupted.toml", "--rounds", "1")
    before = listing(sweep_file)
    first = sweep(sweep_file)
    direct = {name: d / "direct" / name for name in fields}
    for name, f in fields.items():
        direct_run(f, direct[name], d / f"{name}.toml")
    return {"file": sweep_file, "out": out, "before": before, "first": first, "direct": direct}


def test_sweep_runs_every_run_as_a_direct_fedmpi_run_would(swept):
    r = swept["first"]
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    assert "sweep: all 2 run(s) complete" in r.stdout
    assert "2 rank(s), 1 worker(s)" in r.stdout  # ranks = 2 from the sweep file
    for name, reference in swept["direct"].items():
        run = swept["out"] / name
        assert [rec["round"] for rec in read_metrics(run)] == [0, 1, 2, 3]
        np.testing.assert_array_equal(final_weights(run), final_weights(reference), err_msg=name)
        assert comparable(run) == comparable(reference)
    assert [state for _, state, _ in listing(swept["file"])] == ["complete", "complete"]


def test_an_interrupted_run_is_resumed_to_the_weights_of_an_uninterrupted_one(swept):
    assert [(name, state) for name, state, _ in swept["before"]] == [("lr0.05", "new"), ("lr0.1", "partial")]
    out = swept["first"].stdout
    assert re.search(r"^sweep: \[1/2\] lr0\.05: starting: ", out, re.M), out
    assert re.search(r"^sweep: \[2/2\] lr0\.1: resuming: ", out, re.M), out
    assert "resuming at round 1" in out, out
    run = swept["out"] / "lr0.1"
    np.testing.assert_array_equal(final_weights(run), final_weights(swept["direct"]["lr0.1"]))
    assert comparable(run) == comparable(swept["direct"]["lr0.1"])


def test_a_second_sweep_skips_every_complete_run(swept):
    files = [swept["out"] / name / f for name in ("lr0.05", "lr0.1") for f in ("metrics.jsonl", "model.pt")]
    mtimes = [p.stat().st_mtime_ns for p in files]
    r = sweep(swept["file"], timeout=60)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    assert "sweep: [1/2] lr0.05: complete, skipped" in r.stdout
    assert "sweep: [2/2] lr0.1: complete, skipped" in r.stdout
    assert "starting" not in r.stdout and "resuming" not in r.stdout and "fedmpi:" not in r.stdout
    assert [p.stat().st_mtime_ns for p in files] == mtimes


def test_a_failed_run_does_not_stop_the_others(swept, federation, tmp_path):
    fed = federation()
    out = tmp_path / "out"
    rows = [{"data": str(tmp_path / "missing")}, {"data": str(fed)}]  # the failing run comes first
    sweep_file = write_sweep(tmp_path / "s.toml", out, {**BASE, "lr": 0.1}, rows=rows)
    r = sweep(sweep_file, "--launcher", f"{MPIEXEC} -n 2")
    assert r.returncode == 1, f"{r.stdout}\n{r.stderr}"
    assert "sweep: missing failed with exit status 2" in r.stderr, r.stderr
    assert "sweep: 1 of 2 run(s) failed: missing" in r.stderr, r.stderr
    assert "fedmpi: error:" in r.stderr and "missing" in r.stderr
    assert re.search(r"^sweep: \[2/2\] fed: starting: ", r.stdout, re.M), r.stdout
    # The run after the failure ran to the end: same fields as the reference lr0.1 run.
    np.testing.assert_array_equal(final_weights(out / "fed"), final_weights(swept["direct"]["lr0.1"]))
    assert {name: state for name, state, _ in listing(sweep_file)} == {"missing": "new", "fed": "complete"}


def sweep_in_training(federation, tmp_path):
    """A 2-run sweep of 40 rounds each (long enough to be interrupted) started as a process, once its
    first job has written rounds 0..2: (sweep file, out folder, the runs' fields, the process)."""
    out = tmp_path / "out"
    slow = {**BASE, "rounds": 40, "eval_every": 20}  # evaluation (of 10,000 images) is most of such a round
    sweep_file = write_sweep(tmp_path / "s.toml", out, {**slow, "data": str(federation())}, grid={"lr": LRS},
                             ranks=2)
    proc = subprocess.Popen([PYTHON, "-m", "fedmpi.sweep", str(sweep_file)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + TIMEOUT_S
    while len(read_metrics(out / "lr0.05")) < 3:
        if time.monotonic() > deadline or proc.poll() is not None:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError("the first run did not start")
        time.sleep(0.2)
    return sweep_file, out, slow, proc


def assert_rerun_finishes_as_direct_runs(sweep_file, out, slow, federation, tmp_path):
    """After a stop during sweep_in_training's first run: it is partial, the second new, and rerunning the
    sweep resumes the first to the weights of a direct run."""
    assert [state for _, state, _ in listing(sweep_file)] == ["partial", "new"]
    again = sweep(sweep_file)
    assert again.returncode == 0 and "lr0.05: resuming" in again.stdout, f"{again.stdout}\n{again.stderr}"
    reference = tmp_path / "direct"
    direct_run({**slow, "data": str(federation()), "lr": LRS[0]}, reference, tmp_path / "direct.toml")
    np.testing.assert_array_equal(final_weights(out / "lr0.05"), final_weights(reference))


def test_usr1_to_the_sweep_checkpoints_the_running_job_and_the_same_command_goes_on(swept, federation, tmp_path):
    """SLURM's pre-timeout signal reaches the sweep: its job checkpoints, the sweep exits 75 without
    starting the next run, and rerunning the command ends both runs where direct runs end."""
    sweep_file, out, slow, proc = sweep_in_training(federation, tmp_path)
    try:
        proc.send_signal(signal.SIGUSR1)
        output, _ = proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 75, output
    assert "sweep: stopped during lr0.05 (exit 75)" in output and "lr0.1: starting" not in output, output
    assert (out / "lr0.05" / "checkpoint.h5").exists()
    assert_rerun_finishes_as_direct_runs(sweep_file, out, slow, federation, tmp_path)


# ---- bad sweep files -----------------------------------------------------------------------------

GOOD_TAIL = '[base]\ndata = "/nowhere/fed"\n[grid]\nlr = [0.05, 0.1]\n'


@pytest.mark.parametrize("text, expected", [
    pytest.param('out = "OUT"\nrank = 2\n' + GOOD_TAIL, ["unknown key", "rank"], id="unknown-top-level-key"),
    pytest.param('out = "OUT"\n[base]\ndata = "/nowhere/fed"\n[grid]\nlearning_rate = [0.1]\n',
                 ["'grid.learning_rate' is not a run field"], id="grid-key-not-a-run-field"),
    pytest.param('out = "OUT"\n[base]\ndata = "/nowhere/fed"\n[[rows]]\nepoch = 5\n',
                 ["'rows[0].epoch' is not a run field"], id="row-key-not-a-run-field"),
    pytest.param('out = "OUT"\n[base]\ndata = "/nowhere/fed"\n[grid]\nout = ["a", "b"]\n',
                 ["'grid.out' is not a run field"], id="grid-out"),
    pytest.param('out = "OUT"\n[base]\ndata = "/nowhere/fed"\n[grid]\nlr = [0.1, -1]\n',
                 ["run lr-1", "'lr'"], id="invalid-lr-in-grid"),
    pytest.param('out = "OUT"\n[base]\ndata = "/nowhere/fed"\nmodel = "resnet"\n[grid]\nlr = [0.1, 0.2]\n',
                 ["run lr0.1", "'model'"], id="invalid-base-value"),
    pytest.param(GOOD_TAIL, ["'out' must name"], id="missing-out"),
    pytest.param('out = "OUT"\ngrid = 3\n', ["'grid' must be a table"], id="grid-not-a-table"),
    pytest.param('out = "OUT"\n[base\n', ["TOML syntax error"], id="toml-syntax"),
    pytest.param(None, ["not found", "absent.toml"], id="file-does-not-exist"),
    pytest.param('out = "OUT"\nranks = "three"\n' + GOOD_TAIL, ["ranks"], id="ranks-not-a-number"),
    pytest.param('out = 3\n' + GOOD_TAIL, ["out"], id="out-not-a-string"),
    pytest.param('out = "OUT"\n[base]\ndata = "/nowhere/fed"\n[grid]\nlr = []\n', ["grid is empty"], id="empty-grid"),
])
def test_bad_sweep_file_is_one_error_line_and_exit_2(text, expected, tmp_path):
    out = tmp_path / "out"
    path = tmp_path / ("absent.toml" if text is None else "sweep.toml")
    if text is not None:
        path.write_text(text.replace("OUT", str(out)))
    r = sweep(path, timeout=60)
    lines = r.stderr.splitlines()
    assert r.returncode == 2 and len(lines) == 1 and ERROR_LINE.match(lines[0]), \
        f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    for part in expected:
        assert part in lines[0], lines[0]
    assert "Traceback" not in r.stderr and not r.stdout
    assert not out.exists()


# ---- one runner per sweep folder, and none left behind (issue 25 H2, M3) ----------------------------

def start_sweep(sweep_file: Path, log: Path) -> subprocess.Popen:
    """`python -m fedmpi.sweep FILE` left running in its own session, its output going to `log` (a job
    that outlives the sweep keeps writing there)."""
    with log.open("w") as f:
        return subprocess.Popen([PYTHON, "-m", "fedmpi.sweep", str(sweep_file)], stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)


def freeze_first_job(proc: subprocess.Popen, out: Path, log: Path) -> list[int]:
    """Once the sweep's first job has recorded round 0 (in training, its run folder held, the next run not
    started), stop (SIGSTOP) its two ranks at once, where they are; returns their pids, for SIGCONT. The
    sweep waits on its job meanwhile, so nothing under `out` changes, and the round lasts as long as the
    test needs. (pip's MPICH starts the ranks in sessions of their own, outside the sweep's group.)"""
    deadline, ranks = time.monotonic() + TIMEOUT_S, {}
    while len(ranks) < 2 or not read_metrics(out / "lr0.05"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the first run did not start (exit {proc.poll()})\n{log.read_text()}")
        if len(ranks) < 2:  # found during set-up, so that the stop follows round 0 closely
            ranks = rank_pids(str(out))
        time.sleep(0.01)
    for pid in ranks.values():
        os.kill(pid, signal.SIGSTOP)
    return list(ranks.values())


def signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL for what is left of a process group of start_sweep (the sweep, an mpiexec that outlived it)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


def kill_all(out: Path, *procs: subprocess.Popen | None) -> None:
    """SIGKILL for whatever the test started that is left: the ranks of jobs on `out` and the process
    groups of start_sweep."""
    signal_all(list(rank_pids(str(out)).values()), signal.SIGKILL)
    for proc in filter(None, procs):
        kill_group(proc)


def living(group: int) -> list[int]:
    """The processes of a process group that have not ended (zombies left out)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == group:
            found.append(int(pid))
    return found


def snapshot(folder: Path) -> dict:
    """Every path under folder (and folder itself), with its bytes if a file and its modification time."""
    paths = [folder, *folder.rglob("*")]
    return {str(p): (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns) for p in paths}


def test_a_refused_second_sweep_leaves_the_running_sweeps_folder_as_it_was(swept, federation, tmp_path):
    """A second sweep on a folder in use (another file: epochs 2) is refused in one line before it writes
    anything, and the first sweep trains its next run with its own config. The refused one used to rewrite
    the running sweep's plan first, so that its next run trained with epochs 2."""
    out, log = tmp_path / "out", tmp_path / "first.log"
    fields = {**BASE, "data": str(federation())}
    first = start_sweep(write_sweep(tmp_path / "a.toml", out, fields, grid={"lr": LRS}, ranks=2), log)
    other = write_sweep(tmp_path / "b.toml", out, {**fields, "epochs": 2}, grid={"lr": LRS}, ranks=2)
    try:
        ranks = freeze_first_job(first, out, log)
        try:
            before = snapshot(out)
            second = sweep(other, timeout=60)
            after = snapshot(out)
        finally:
            signal_all(ranks, signal.SIGCONT)
        first.wait(timeout=TIMEOUT_S)
    finally:
        kill_all(out, first)
    lines = second.stderr.splitlines()
    assert second.returncode == 2 and not second.stdout and len(lines) == 1 and ERROR_LINE.match(lines[0]) \
        and "in use by another job" in lines[0], f"exit {second.returncode}\n{second.stdout}\n{second.stderr}"
    assert after == before
    assert first.returncode == 0 and "sweep: all 2 run(s) complete" in log.read_text(), log.read_text()
    for name, reference in swept["direct"].items():  # epochs 1, as the first sweep's file says
        np.testing.assert_array_equal(final_weights(out / name), final_weights(reference), err_msg=name)


def waiting_rerun(sweep_file: Path, log: Path) -> subprocess.Popen:
    """A rerun of the sweep (start_sweep), once it has said that it waits for the held run folder."""
    rerun, deadline = start_sweep(sweep_file, log), time.monotonic() + 60
    while "lr0.05: its folder is still held by a job" not in log.read_text():
        if rerun.poll() is not None or time.monotonic() > deadline:
            kill_group(rerun)  # its job's ranks, if any: kill_all at the test's end
            raise AssertionError(f"the rerun did not wait (exit {rerun.returncode})\n{log.read_text()}")
        time.sleep(0.05)
    return rerun


def test_a_rerun_right_after_a_sigkill_of_the_sweep_waits_for_its_job_and_completes(swept, federation, tmp_path):
    """SIGKILL of the sweep runner sends its job SIGTERM (PR_SET_PDEATHSIG): the job checkpoints after its
    round and ends. A rerun started at once that meets the run folder still held by that job waits for it,
    then resumes the run, and completes every run; it used to fail the run as 'in use'. The orphaned job
    stays stopped (SIGSTOP) until the rerun has said it waits: a round as slow as the test needs. A stop
    request (SLURM's USR1) ends a waiting rerun at once."""
    out, log, relog = tmp_path / "out", tmp_path / "first.log", tmp_path / "rerun.log"
    sweep_file = write_sweep(tmp_path / "s.toml", out, {**BASE, "data": str(federation())}, grid={"lr": LRS},
                             ranks=2)
    first = start_sweep(sweep_file, log)
    stopped = rerun = None
    try:
        ranks = freeze_first_job(first, out, log)
        first.kill()  # the runner only; its job gets SIGTERM, pending until it runs again
        first.wait(timeout=10)
        stopped = waiting_rerun(sweep_file, tmp_path / "stopped.log")
        stopped.send_signal(signal.SIGUSR1)
        stopped.wait(timeout=10)
        rerun = waiting_rerun(sweep_file, relog)
        signal_all(ranks, signal.SIGCONT)
        rerun.wait(timeout=TIMEOUT_S)
        deadline = time.monotonic() + 10  # the orphaned job's processes end by themselves
        while living(first.pid):
            assert time.monotonic() < deadline, "the job of the killed sweep still runs"
            time.sleep(0.1)
    finally:
        kill_all(out, first, stopped, rerun)
    assert stopped.returncode == 75 and "stop requested before lr0.05" in (tmp_path / "stopped.log").read_text()
    assert "stop requested; checkpoint of round" in log.read_text(), log.read_text()
    output = relog.read_text()
    assert rerun.returncode == 0 and "lr0.05: resuming" in output and "sweep: all 2 run(s) complete" in output, \
        output
    for name, reference in swept["direct"].items():
        np.testing.assert_array_equal(final_weights(out / name), final_weights(reference), err_msg=name)
