"""jobs/ on a real one-node SLURM (munged + slurmctld + slurmd, see slurm_cluster.py): a training job
runs a config to the end and names its SLURM output in the run folder; USR1 makes it checkpoint, requeue
itself and resume to the weights of a run that never stopped (with srun and with pip's mpiexec), and in
an array only the task signalled; scancel leaves a checkpoint and no requeue; a second job on a finished
run folder is refused unless it says --resume; a wrong srun --mpi plugin stops the job with one line;
prep -> train -> plot and a scaling study run as dependent jobs; `python -m fedmpi.sweep --slurm`
submits a sweep's unfinished runs as one array job. Skipped where SLURM is not
installed, unless CI is set: then that is a failure.

Also, without SLURM: the PMI-mismatch check on its real code path, the scaling CSV's
speedup/efficiency arithmetic and both plots.
"""
from __future__ import annotations

import json
import tomllib
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
import tomli_w

from fedmpi.metrics import read_metrics
from fedmpi.scaling import gather, plan, read_csv, write_csv
from helpers import PYTHON, comparable, final_weights, launch
from slurm_cluster import SlurmCluster, unavailable

ROOT = Path(__file__).resolve().parents[1]
JOBS = ROOT / "jobs"
SIZES = ["--ntasks-per-node=3", "--cpus-per-task=1"]  # server + 2 workers, 1 thread each
JOB_TIMEOUT = 150  # seconds; a tiny job takes ~10 s on an idle 2-core machine


@pytest.fixture(scope="session")
def slurm(tmp_path_factory, request):
    reason = unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set, so the SLURM tests must run, but: {reason}")
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    request.addfinalizer(cluster.stop)  # runs even when start() or a test fails
    return cluster.start()


def job_env(**extra) -> dict:
    """The environment sbatch exports to the job: this venv's python and mpiexec first on PATH."""
    return {"PATH": f"{Path(PYTHON).parent}{os.pathsep}{os.environ.get('PATH', '')}", **extra}


def submit(slurm, *args, cwd: Path, **env) -> str:
    return slurm.run("sbatch", "--parsable", *args, cwd=cwd, env=job_env(**env)).stdout.strip().split(";")[0]


def job_log(slurm, job_id: str) -> str:
    path = Path(slurm.job(job_id)["StdOut"])
    return path.read_text() if path.exists() else f"(no log at {path})"


def wait_done(slurm, job_id: str, timeout: float = JOB_TIMEOUT) -> dict:
    info = slurm.wait_job(job_id, timeout)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", \
        f"job {job_id}: {info['JobState']} exit {info['ExitCode']}\n{job_log(slurm, job_id)}\n{slurm.logs()}"
    return info


def write_config(path: Path, fed: Path, out: Path, rounds: int = 6) -> Path:
    path.write_text(f'data = "{fed}"\nmodel = "2nn"\nfraction = 0.2\nepochs = 1\nbatch_size = 50\n'
                    f'lr = 0.1\nrounds = {rounds}\nseed = 3\nout = "{out}"\n')
    return path



@pytest.fixture(scope="module")
def uninterrupted(slurm, federation, tmp_path_factory):
    """A job from jobs/fedavg.sbatch (srun) that runs to the end: (run folder, its log, its SLURM record).
    SLURM_MPI_TYPE=none would make each task a world of one: FEDMPI_SRUN_MPI goes before it. It trains
    from a copy of the federation staged to 'node-local' disk (FEDMPI_STAGE): the runs compared with it
    read the shared one."""
    d = tmp_path_factory.mktemp("sbatch")
    config = write_config(d / "tiny.toml", federation(clients=10), d / "run")
    started = time.monotonic()
    job = submit(slurm, *SIZES, str(JOBS / "fedavg.sbatch"), str(config), cwd=d, SLURM_MPI_TYPE="none",
                 FEDMPI_SRUN_MPI="pmi2", FEDMPI_STAGE=str(d / "local"))
    info = wait_done(slurm, job)
    print(f"sbatch fedavg.sbatch: submit -> COMPLETED in {time.monotonic() - started:.1f} s")
    return d / "run", job_log(slurm, job), info


def test_fedavg_sbatch_trains_a_config_to_the_end(uninterrupted):
    run, log, info = uninterrupted
    assert "srun --mpi=pmi2" in log
    assert f"run folder {run}:" in log  # the output names the run folder, the run folder the output
    assert re.fullmatch(rf"\S+ \S+ job {info['JobId']} start 1 on \S+: exit 0, output {info['StdOut']}\n",
                        (run / "slurm-jobs.txt").read_text())
    assert "3 rank(s), 2 worker(s), 1 thread(s)/rank" in log  # threads from SLURM_CPUS_PER_TASK
    assert "workers train on cpu" in log
    staged = run.parent / "local" / "fed"
    assert "staging " in log and f" on {staged} (10 clients" in log, log  # the start line names the copy
    assert sorted(p.name for p in staged.iterdir()) == sorted(p.name for p in federation_of(run).iterdir())
    assert [r["round"] for r in read_metrics(run)] == list(range(7))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["ranks"] == 3 and summary["final_test_accuracy"] > 0.8
    assert (run / "model.pt").is_file() and (run / "config.toml").is_file()


def federation_of(run: Path) -> Path:
    return Path(tomllib.loads((run.parent / "tiny.toml").read_text())["data"])


def start_and_wait_for_round_1(slurm, fed, tmp_path, **env) -> str:
    config = write_config(tmp_path / "tiny.toml", fed, tmp_path / "run")
    job = submit(slurm, *SIZES, str(JOBS / "fedavg.sbatch"), str(config), cwd=tmp_path, **env)
    deadline = time.monotonic() + JOB_TIMEOUT
    while not any(r["round"] >= 1 for r in read_metrics(tmp_path / "run")):
        info = slurm.job(job)
        assert info["JobState"] in ("PENDING", "RUNNING"), f"{info}\n{job_log(slurm, job)}"
        assert time.monotonic() < deadline, f"round 1 not reached in {JOB_TIMEOUT} s\n{job_log(slurm, job)}"
        time.sleep(0.2)
    return job


@pytest.mark.parametrize("launcher", ["srun", "mpiexec"])
def test_usr1_checkpoints_requeues_and_resumes_to_the_weights_of_an_uninterrupted_run(
        launcher, slurm, federation, uninterrupted, tmp_path):
    """What `#SBATCH --signal=B:USR1@120` does near the time limit, sent at once instead."""
    job = start_and_wait_for_round_1(slurm, federation(clients=10), tmp_path, FEDMPI_LAUNCHER=launcher)
    slurm.run("scancel", "--batch", "--signal=USR1", job)
    info = wait_done(slurm, job)
    log = job_log(slurm, job)
    assert info["Restarts"] == "1", log
    assert "stop requested; checkpoint of round" in log and "(exit 75); requeueing" in log, log
    resumed_at = int(re.search(r"resuming at round (\d+)", log).group(1))
    assert 1 < resumed_at < 6, log
    assert log.count(f"{launcher} ") >= 2 and "start 2 on" in log, log
    np.testing.assert_array_equal(final_weights(tmp_path / "run"), final_weights(uninterrupted[0]))
    assert comparable(tmp_path / "run") == comparable(uninterrupted[0])
    starts = (tmp_path / "run" / "slurm-jobs.txt").read_text()
    assert re.search(rf"job {job} start 1 on .*: exit 75, output .*\n.* job {job} start 2 on .*: exit 0, output ",
                     starts), starts


def test_a_second_job_on_a_finished_run_folder_is_refused_unless_it_says_resume(slurm, uninterrupted, tmp_path):
    """`sbatch jobs/fedavg.sbatch CONFIG --rounds 8` after CONFIG's job: one line, not a silent extension."""
    run = uninterrupted[0]
    before = comparable(run)
    job = submit(slurm, *SIZES, str(JOBS / "fedavg.sbatch"), str(run.parent / "tiny.toml"), "--rounds", "8",
                 cwd=tmp_path)
    info = slurm.wait_job(job, JOB_TIMEOUT)
    log = job_log(slurm, job)
    assert (info["JobState"], info["ExitCode"]) == ("FAILED", "2:0"), log
    assert f"fedmpi: error: run folder {run} exists; pass --resume to continue it" in log, log
    assert comparable(run) == before and (run / "slurm-jobs.txt").read_text().count("\n") == 1


def test_scancel_leaves_a_checkpoint_and_the_job_stays_cancelled(slurm, federation, tmp_path):
    """SIGTERM also checkpoints, but must not requeue: scontrol requeue would undo the scancel."""
    job = start_and_wait_for_round_1(slurm, federation(clients=10), tmp_path)
    slurm.run("scancel", job)
    info = slurm.wait_job(job, JOB_TIMEOUT)
    deadline = time.monotonic() + 30
    while "not requeued" not in job_log(slurm, job) and time.monotonic() < deadline:
        time.sleep(0.2)  # the batch shell may still be writing its last line
    log = job_log(slurm, job)
    assert "stop requested; checkpoint of round" in log and "not requeued" in log, log
    time.sleep(2)  # a requeue would have made it PENDING within milliseconds
    info = slurm.job(job)
    assert info["JobState"] == "CANCELLED" and info["Restarts"] == "0", info
    assert (tmp_path / "run" / "checkpoint.h5").is_file() and not (tmp_path / "run" / "model.pt").exists()


def test_a_wrong_srun_mpi_plugin_stops_the_job_with_one_line_before_anything_is_written(
        slurm, federation, tmp_path):
    """srun --mpi=none (here from SLURM_MPI_TYPE) makes each of the 3 tasks an MPI world of one."""
    config = write_config(tmp_path / "tiny.toml", federation(clients=10), tmp_path / "run")
    job = submit(slurm, *SIZES, str(JOBS / "fedavg.sbatch"), str(config), cwd=tmp_path, SLURM_MPI_TYPE="none")
    info = slurm.wait_job(job, JOB_TIMEOUT)
    log = job_log(slurm, job)
    assert "srun --mpi=none" in log and (info["JobState"], info["ExitCode"]) == ("FAILED", "2:0"), log
    assert log.count("fedmpi:") == 1 and "fedmpi: error: srun started 3 tasks but MPI sees a world of 1 in " \
                                          "each: srun's PMI plugin does not match this MPI" in log, log
    assert not (tmp_path / "run").exists()


def test_pipeline_runs_prep_then_train_then_plot_as_dependent_jobs(slurm, tmp_path):
    config = write_config(tmp_path / "tiny.toml", Path("unused"), Path("unused"), rounds=2)
    data, run = tmp_path / "data" / "fed", tmp_path / "runs" / "tiny"
    r = slurm.run(str(JOBS / "pipeline.sh"), str(config), str(data), str(run),
                  "--dataset", "mnist", "--partition", "iid", "--clients", "10", "--", "--seed", "1",
                  cwd=tmp_path, env=job_env(FEDMPI_TRAIN_SBATCH=" ".join(SIZES)))
    ids = dict(re.findall(r"(prep|train|plot) (\d+)", r.stdout))
    assert set(ids) == {"prep", "train", "plot"}, r.stdout + r.stderr
    plot = wait_done(slurm, ids["plot"], timeout=2 * JOB_TIMEOUT)
    prep, train = wait_done(slurm, ids["prep"]), wait_done(slurm, ids["train"])
    assert prep["EndTime"] <= train["StartTime"] and train["EndTime"] <= plot["StartTime"]
    assert (data / "manifest.json").is_file()
    assert "seed = 1" in (run / "config.toml").read_text()  # the flags after -- reach fedmpi
    assert json.loads((run / "summary.json").read_text())["rounds"] == 2
    assert (run / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scaling_sh_runs_each_rank_count_as_a_job_then_gathers_and_plots(slurm, federation, tmp_path):
    config = write_config(tmp_path / "tiny.toml", federation(clients=10), tmp_path / "unused", rounds=3)
    study = tmp_path / "study"
    r = slurm.run(str(JOBS / "scaling.sh"), "strong", "--ranks", "1,3", "--tasks-per-node", "3",
                  "--sbatch", "--cpus-per-task=1", "--out", str(study), str(config),
                  cwd=tmp_path, env=job_env())
    gather_job = re.search(r"gather \+ plot: job (\d+)", r.stdout)
    assert gather_job, r.stdout + r.stderr
    wait_done(slurm, gather_job.group(1), timeout=2 * JOB_TIMEOUT)
    rows = read_csv(study / "results.csv")
    assert [(r["ranks"], r["workers"], r["clients_per_round"]) for r in rows] == [(1, 1, 2), (3, 2, 2)]
    assert rows[0]["speedup"] == 1 and all(r["round_s"] > 0 for r in rows)
    assert (study / "scaling.png").read_bytes()[:4] == b"\x89PNG"


# ---- python -m fedmpi.sweep --slurm: one array job of jobs/fedavg.sbatch -------------------------
ARRAY_SIZES = ["--ntasks-per-node=2", "--cpus-per-task=1"]  # 2 ranks per task: both tasks fit the node


def wait_array(slurm, job_id: str, tasks: int, timeout: float = 2 * JOB_TIMEOUT) -> list[dict]:
    """Until every task of array job_id has ended (`scontrol show job -o ID`: one line per task)."""
    ended = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED")
    deadline = time.monotonic() + timeout
    while True:
        out = slurm.run("scontrol", "show", "job", "-o", job_id).stdout
        infos = [dict(item.split("=", 1) for item in line.split() if "=" in item) for line in out.splitlines()]
        if sorted(i.get("ArrayTaskId") for i in infos) == [str(t) for t in range(tasks)] \
                and all(i["JobState"] in ended for i in infos):
            return sorted(infos, key=lambda i: int(i["ArrayTaskId"]))
        if time.monotonic() > deadline:
            slurm.run("scancel", job_id, check=False)
            raise AssertionError(f"array job {job_id} not done after {timeout} s:\n{out}\n{slurm.logs()}")
        time.sleep(0.5)


def test_sweep_slurm_submits_the_unfinished_runs_as_one_array_job(slurm, federation, tmp_path):
    fed = federation()
    base = {"data": str(fed), "model": "2nn", "fraction": 0.02, "epochs": 1, "batch_size": 50, "rounds": 3,
            "seed": 1, "threads": 1}
    out = tmp_path / "sweep"
    sweep_file = tmp_path / "sweep.toml"
    sweep_file.write_text(tomli_w.dumps({"out": str(out), "ranks": 2, "base": base, "grid": {"lr": [0.05, 0.1]}}))

    def sweep(*args):
        return slurm.run(PYTHON, "-m", "fedmpi.sweep", str(sweep_file), *args, cwd=tmp_path, env=job_env(),
                         timeout=60)

    r = sweep("--slurm", "--", "--cpus-per-task=1")  # the tasks' size: the sweep's ranks = 2
    assert "sweep: submitting 2 run(s): sbatch --array=0-1" in r.stdout and "--ntasks=2" in r.stdout, \
        r.stdout + r.stderr
    job = re.search(r"Submitted batch job (\d+)", r.stdout).group(1)
    started = time.monotonic()
    tasks = wait_array(slurm, job, 2)
    print(f"sweep --slurm: 2 array tasks COMPLETED in {time.monotonic() - started:.1f} s")
    for task, name in zip(tasks, ["lr0.05", "lr0.1"]):
        log = Path(out / f"slurm-{job}_{task['ArrayTaskId']}.out")
        text = log.read_text() if log.exists() else f"(no log at {log})"
        assert task["JobState"] == "COMPLETED" and task["ExitCode"] == "0:0", f"{task}\n{text}"
        assert f"--config {(out / 'plan' / name).resolve()}.toml" in text, text  # task i runs line i+1
        assert "2 rank(s), 1 worker(s)" in text, text
        assert json.loads((out / name / "summary.json").read_text())["rounds"] == 3
    listing = sweep("--list").stdout.splitlines()
    assert [line.split("\t")[:2] for line in listing] == [["lr0.05", "complete"], ["lr0.1", "complete"]]

    # The same run outside SLURM: bit for bit the weights of array task 1.
    config = tmp_path / "direct.toml"
    config.write_text(tomli_w.dumps({**base, "lr": 0.1, "out": str(tmp_path / "direct")}))
    d = launch(2, ["--config", str(config)], timeout=JOB_TIMEOUT)
    assert d.returncode == 0, d.stderr
    np.testing.assert_array_equal(final_weights(out / "lr0.1"), final_weights(tmp_path / "direct"))

    again = sweep("--slurm", "--", *ARRAY_SIZES)
    assert "sweep: all 2 run(s) complete; nothing to submit" in again.stdout, again.stdout + again.stderr
    assert "Submitted batch job" not in again.stdout
    assert slurm.run("squeue", "-h", "-o", "%i").stdout.split() == []


def test_usr1_to_one_array_task_requeues_that_task_only(slurm, federation, tmp_path):
    """Two array tasks, the same run into two folders. USR1 goes to the task whose job id is also the
    array's id: `scontrol requeue <that id>` would requeue both. It alone checkpoints, is requeued and
    resumes to the weights of the other task, which runs once, start to end."""
    fed = federation(clients=10)
    runs = [tmp_path / f"run{t}" for t in range(2)]
    listing = tmp_path / "array.txt"
    listing.write_text("".join(f"{write_config(tmp_path / f'task{t}.toml', fed, run, rounds=12)}\n"
                               for t, run in enumerate(runs)))
    job = submit(slurm, "--array=0-1", *ARRAY_SIZES, f"--output={tmp_path}/slurm-%A_%a.out",
                 str(JOBS / "fedavg.sbatch"), str(listing), cwd=tmp_path)
    started = time.monotonic()
    while not all(any(r["round"] >= 1 for r in read_metrics(run)) for run in runs):
        out = slurm.run("scontrol", "show", "job", "-o", job).stdout
        assert "FAILED" not in out and time.monotonic() - started < JOB_TIMEOUT, out
        time.sleep(0.2)
    out = slurm.run("scontrol", "show", "job", "-o", job).stdout
    signalled = re.search(rf"JobId={job} ArrayJobId={job} ArrayTaskId=(\d) ", out).group(1)
    other = str(1 - int(signalled))
    slurm.run("scancel", "--batch", "--signal=USR1", f"{job}_{signalled}")
    tasks = {t["ArrayTaskId"]: t for t in wait_array(slurm, job, 2)}
    print(f"array: 2 tasks, one requeued, COMPLETED in {time.monotonic() - started:.1f} s")
    logs = {t: (tmp_path / f"slurm-{job}_{t}.out").read_text() for t in tasks}
    assert all(t["JobState"] == "COMPLETED" and t["ExitCode"] == "0:0" for t in tasks.values()), logs
    assert tasks[signalled]["Restarts"] == "1" and tasks[other]["Restarts"] == "0", (tasks, logs)
    assert f"(exit 75); requeueing job {job}_{signalled}\n" in logs[signalled], logs[signalled]
    assert "resuming at round" in logs[signalled] and "start 2 on" not in logs[other], logs
    run, reference = runs[int(signalled)], runs[int(other)]
    np.testing.assert_array_equal(final_weights(run), final_weights(reference))
    assert comparable(run) == comparable(reference)
    assert f"exit 75, output {tmp_path}/slurm-{job}_{signalled}.out\n" in (run / "slurm-jobs.txt").read_text()


# ---- without SLURM: the PMI-mismatch check, the scaling arithmetic and the plots -----------------
def test_a_world_of_one_in_a_step_of_several_tasks_stops_before_anything_is_written(federation, tmp_path):
    """What srun's task 0 sees with the wrong --mpi plugin: SLURM_STEP_NUM_TASKS=3, a world of 1. A batch
    shell or salloc sets SLURM_NTASKS but no step: a one-process run there goes on (here to its next check)."""
    flags = ["--data", str(federation(clients=10)), "--out", str(tmp_path / "run"), "--rounds", "1"]
    task0 = launch(0, flags, timeout=60, env={"SLURM_STEP_NUM_TASKS": "3", "SLURM_NTASKS": "3", "SLURM_PROCID": "0"})
    assert task0.returncode == 2 and task0.stdout == "", task0
    assert task0.stderr == ("fedmpi: error: srun started 3 tasks but MPI sees a world of 1 in each: srun's PMI "
                            "plugin does not match this MPI (pip's MPICH: --mpi=pmi2; Open MPI 5: --mpi=pmix; "
                            "jobs/fedavg.sbatch: FEDMPI_SRUN_MPI); nothing was written\n"), task0.stderr
    assert not (tmp_path / "run").exists()
    alone = launch(0, [*flags, "--data", str(tmp_path / "none")], timeout=60,
                   env={"SLURM_NTASKS": "3", "SLURM_PROCID": "0"})
    assert alone.returncode == 2 and "federation" in alone.stderr and "srun" not in alone.stderr, alone.stderr


def fake_run(folder: Path, ranks: int, m: int, seconds: list[float], train_sum: float) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text('model = "2nn"\n')
    (folder / "summary.json").write_text(json.dumps({"ranks": ranks}))
    records = [{"round": 0, "test_accuracy": 0.1}] + [
        {"round": i + 1, "clients": list(range(m)), "test_accuracy": 0.5 + 0.1 * i,
         "time": {"seconds": s, "bcast": 0.01, "reduce": s - 0.02, "train_sum": train_sum, "eval_sum": 0.0}}
        for i, s in enumerate(seconds)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_gather_takes_median_round_times_and_computes_speedup_and_efficiency(tmp_path):
    fake_run(tmp_path / "s" / "p001", 1, 4, [2.0, 9.0, 2.0], 1.9)     # median 2.0: the 9 s outlier drops out
    fake_run(tmp_path / "s" / "p003", 3, 4, [1.0, 1.0, 1.25], 1.8)
    fake_run(tmp_path / "s" / "p005", 5, 4, [0.8, 0.8, 0.8], 1.6)
    (tmp_path / "s" / "p009").mkdir()                                  # unfinished: left out
    (tmp_path / "s" / "p009" / "config.toml").write_text('model = "2nn"\n')
    rows = gather([tmp_path / "s"])
    assert [r["study"] for r in rows] == ["strong"] * 3
    assert [r["speedup"] for r in rows] == pytest.approx([1.0, 2.0, 2.5])
    assert [r["efficiency"] for r in rows] == pytest.approx([1.0, 1.0, 0.625])   # speedup / (W / 1)
    assert rows[1]["compute_s"] == pytest.approx(0.9) and rows[1]["wait_s"] == pytest.approx(0.08)
    write_csv(rows, tmp_path / "r.csv", append=False)
    weak = gather([fake_run(tmp_path / "w" / "p002", 2, 2, [1.0], 1.0),
                   fake_run(tmp_path / "w" / "p005", 5, 8, [1.25], 4.0)])
    assert weak[1]["study"] == "weak" and weak[1]["efficiency"] == pytest.approx(0.8)
    assert weak[1]["speedup"] == pytest.approx(3.2)                             # efficiency · W / W_base
    write_csv(weak, tmp_path / "r.csv", append=True)
    assert [r["series"] for r in read_csv(tmp_path / "r.csv")] == ["strong 2nn m=4"] * 3 + ["weak 2nn 2/worker"] * 2

    from fedmpi.plot import main as plot
    assert plot(["scaling", str(tmp_path / "r.csv"), "-o", str(tmp_path / "s.png"), "--cores", "2"]) == 0
    assert plot([str(tmp_path / "s" / "p001"), str(tmp_path / "s" / "p003"), "-o", str(tmp_path / "a.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 10_000 and (tmp_path / "a.png").stat().st_size > 10_000


def test_scaling_plan_sets_weak_fractions_and_refuses_what_a_run_would(federation, tmp_path):
    flags = ["--data", str(federation(clients=10)), "--rounds", "2"]
    runs = plan("weak", [1, 3, 5], tmp_path / "weak", flags, per_worker=2)
    assert [(p, extra[-1]) for p, _, extra in runs] == [(1, "0.2"), (3, "0.4"), (5, "0.8")]
    assert [p for p, _, _ in plan("strong", [3, 1], tmp_path / "strong", flags, None)] == [1, 3]
    from fedmpi.errors import FedMPIError
    with pytest.raises(FedMPIError, match="clients per round"):
        plan("weak", [9], tmp_path / "w2", flags, per_worker=2)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "p001").mkdir()
    with pytest.raises(FedMPIError, match="exists"):
        plan("strong", [1], tmp_path / "used", flags, None)
