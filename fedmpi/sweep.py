"""`python -m fedmpi.sweep SWEEP.toml`: a grid of runs under one folder, rerunnable.

A sweep file holds the fields every run shares (`[base]`), lists to cross
(`[grid]`), and optionally `[[rows]]`, each crossed with the grid on its own
(so that each row of a paper table can have its own learning-rate grid):

    out = "runs/paper/cnn_iid"     # one run folder per grid point under it
    ranks = 3                      # mpiexec -n (local runs)
    [base]
    data = "data/mnist-iid-100"
    model = "cnn"
    target_accuracy = 0.99
    [grid]
    epochs = [1, 5, 20]
    lr = [0.05, 0.1]

Paths (out, data) are relative to where the command runs. Each run is one
`python -m fedmpi --config OUT/plan/NAME.toml --resume` job, so
a run that is complete is skipped, an interrupted one continues from its
checkpoint, and a changed grid only adds runs. `--slurm` submits the
unfinished runs as one SLURM array of jobs/fedavg.sbatch instead.
"""
from __future__ import annotations

import argparse
import ctypes
import fcntl
import functools
import itertools
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import tomli_w

from fedmpi import algorithms
from fedmpi.config import (ALGORITHM_FIELDS, FIELD_NAMES, LABELS, NON_SEMANTIC, RunConfig, build_config,
                           read_toml)
from fedmpi.errors import DIVERGED, FedMPIError
from fedmpi.runfolder import MARKER, hold_lock

# jobs/ is part of the package (jobs/ at the top of a clone points into it), so that a plain
# `pip install .` can submit too
SBATCH_SCRIPT = Path(str(resources.files("fedmpi") / "jobs" / "fedavg.sbatch"))
SWEEP_KEYS = {"out", "ranks", "base", "grid", "rows"}
FINISHED = ("complete", "diverged")  # states the sweep does not run again
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
ORPHAN_WAIT_S = 600  # a job whose runner died ends after its round: ten minutes cover the paper's longest rounds


@dataclass
class Run:
    name: str
    config: dict  # RunConfig fields, validated

    def folder(self) -> Path:
        return Path(self.config["out"])


def load_sweep(path: str) -> tuple[dict, list[Run]]:
    """The sweep file's settings and its runs, every one validated as a RunConfig."""
    spec = read_toml(path, what="sweep file", check_keys=False)
    unknown = set(spec) - SWEEP_KEYS
    if unknown:
        raise FedMPIError(f"sweep file {path}: unknown key(s) {', '.join(sorted(unknown))}; "
                          f"a sweep has {', '.join(sorted(SWEEP_KEYS))}")
    if not isinstance(spec.get("out"), str) or not spec["out"]:
        raise FedMPIError(f"sweep file {path}: 'out' must name the sweep's folder, e.g. out = \"runs/sweep\"")
    ranks = spec.get("ranks", 3)
    if isinstance(ranks, bool) or not isinstance(ranks, int) or ranks < 1:
        raise FedMPIError(f"sweep file {path}: 'ranks' must be a whole number >= 1, got {ranks!r}")
    base, grid, rows = spec.get("base", {}), spec.get("grid", {}), spec.get("rows", [{}])
    for where, table in [("base", base), ("grid", grid), *((f"rows[{i}]", r) for i, r in enumerate(rows))]:
        if not isinstance(table, dict):
            raise FedMPIError(f"sweep file {path}: '{where}' must be a table")
        for key in table:
            if key not in FIELD_NAMES or key == "out":
                raise FedMPIError(f"sweep file {path}: '{where}.{key}' is not a run field "
                                  f"(run fields: {', '.join(f for f in FIELD_NAMES if f != 'out')})")
    points = []
    for row in rows:
        axes = {k: v if isinstance(v, list) else [v] for k, v in {**grid, **row}.items()}
        for values in itertools.product(*axes.values()):
            chosen = dict(zip(axes, values))
            algorithm = chosen.get("algorithm", base.get("algorithm", "fedavg"))
            # [base] may set one algorithm's own settings (prox_mu, algorithm_args) for a grid over algorithms
            shared = {k: v for k, v in base.items() if ALGORITHM_FIELDS.get(k, algorithm) == algorithm
                      and (k != "algorithm_args" or takes_settings(algorithm))}
            points.append({**shared, **chosen})
    if not points:
        raise FedMPIError(f"sweep file {path}: the grid is empty (a list with no values?)")
    varying = [k for k in FIELD_NAMES if len({json.dumps(p.get(k)) for p in points}) > 1]
    # Names show the semantic fields that vary and the data folder (it holds the partition);
    # the others (rounds, threads, ...) only where the names would collide without them.
    short = [k for k in varying if k == "data" or k not in NON_SEMANTIC]
    if len({run_name(p, short) for p in points}) == len(points):
        varying = short
    runs, out = [], Path(spec["out"])
    for point in points:
        name = run_name(point, varying)
        try:
            cfg = build_config(None, {**point, "out": str(out / name)})
        except FedMPIError as e:
            raise FedMPIError(f"sweep file {path}, run {name}: {e}") from None
        runs.append(Run(name, asdict(cfg)))
    names = [r.name for r in runs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise FedMPIError(f"sweep file {path}: the grid lists the same run more than once: {', '.join(twice)}")
    return {"out": out, "ranks": ranks}, runs


def takes_settings(algorithm) -> bool:
    """Whether `algorithm` has settings of its own (algorithm_args); a bad name is refused later."""
    return not algorithms.check_name(str(algorithm)) and algorithms.resolve(algorithm).Args is not None


def run_name(point: dict, varying: list[str]) -> str:
    parts = []
    for key in varying:
        value = point.get(key)
        if value is None:  # not set in this point's row: the default, left out of the name
            continue
        if key == "data":
            parts.append(Path(str(value)).name)
        elif key == "batch_size" and value in (0, "inf", "full", "∞"):
            parts.append("Binf")
        elif key == "algorithm" and ":" in str(value):  # a user's "package.module:Class"
            parts.append(str(value).split(":")[1])
        elif isinstance(value, dict):  # algorithm_args
            parts.append("_".join(f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}" for k, v in value.items()))
        else:
            parts.append(f"{LABELS.get(key, key + '=')}{value:g}" if isinstance(value, float)
                         else f"{LABELS.get(key, key + '=')}{value}")
    return "_".join(parts) or "run"


def status(run: Run) -> str:
    """complete | diverged (ended by a non-finite update: an outcome too) | partial (has a
    checkpoint) | new. An unreadable summary (a run of an older fedmpi stopped while writing it)
    means not complete: the run is resumed, which rewrites it."""
    folder = run.folder()
    summary = folder / "summary.json"
    if summary.exists() and (folder / "config.toml").exists():
        try:
            done = json.loads(summary.read_text())
            recorded = read_toml(str(folder / "config.toml"), check_keys=False)
        except (ValueError, FedMPIError):
            done, recorded = {}, {}
        # Fields that change the result or its end; others (threads, eval_every, ...) may differ.
        # A field the recorded config lacks was added later: the run had its default.
        defaults = asdict(RunConfig())
        same = all(recorded.get(k, defaults[k]) == run.config[k] for k in FIELD_NAMES
                   if k not in NON_SEMANTIC or k in ("rounds", "target_accuracy"))
        if same and done.get("diverged"):
            return "diverged"
        if same and (done.get("rounds") == run.config["rounds"] or done.get("target_round") is not None):
            return "complete"
    return "partial" if (folder / "checkpoint.h5").exists() else "new"


def write_plan(settings: dict, runs: list[Run]) -> dict[str, Path]:
    """One config file per run under OUT/plan; returns their paths by run name."""
    plan = settings["out"] / "plan"
    plan.mkdir(parents=True, exist_ok=True)
    paths = {}
    for run in runs:
        path = plan / f"{run.name}.toml"
        text = tomli_w.dumps(run.config)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        paths[run.name] = path
    return paths


def default_launcher(ranks: int) -> list[str]:
    """mpiexec beside this Python (a venv with pip's MPICH), else the first on PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    return [str(beside) if beside.exists() else "mpiexec", "-n", str(ranks)]


def wait_for_folder(run: Run, stop: list) -> None:
    """Wait, at most ORPHAN_WAIT_S and while no stop is requested, as long as another process holds the run
    folder's lock: the job of a runner killed by SIGKILL got SIGTERM (die_with_parent) and ends after its
    round's checkpoint. Past the bound, the job started next is refused as 'in use' and names the holder."""
    try:
        fd = os.open(run.folder() / MARKER, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:  # no marker yet, or none fedmpi would use: the job says what is wrong
        return
    try:
        deadline, said = time.monotonic() + ORPHAN_WAIT_S, False
        while not stop and time.monotonic() < deadline:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if not said:
                    print(f"sweep: {run.name}: its folder is still held by a job (an earlier runner's, ending?); "
                          f"waiting up to {ORPHAN_WAIT_S} s for it to end", flush=True)
                    said = True
                time.sleep(0.5)
    finally:
        os.close(fd)  # drops the lock taken above: the job takes it next


def die_with_parent(parent: int) -> None:
    """In the child: get SIGTERM when the sweep dies (even by SIGKILL), so the job checkpoints and ends
    instead of running on beside a rerun of the sweep (Linux prctl PR_SET_PDEATHSIG). A sweep that died
    before the prctl took effect sends nothing: then the child ends here, before it starts the job."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os._exit(75)


def run_locally(runs: list[Run], paths: dict[str, Path], launcher: list[str]) -> int:
    """Run the unfinished runs one after another; stop at a stop request, go on past failures."""
    failed, diverged, child, stop = [], [], None, []

    def forward(signum, frame):  # SLURM's USR1 / TERM: the running job checkpoints and exits 75
        stop.append(signum)
        if child and child.poll() is None:
            child.send_signal(signum)
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, forward)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the job itself (same process group)
    for i, run in enumerate(runs, 1):
        if status(run) not in FINISHED:
            wait_for_folder(run, stop)  # the state is read again after: the job that held it may have changed it
        state = status(run)
        if state in FINISHED:
            print(f"sweep: [{i}/{len(runs)}] {run.name}: {state}, skipped", flush=True)
            if state == "diverged":
                diverged.append(run.name)
            continue
        if stop:
            print(f"sweep: stop requested before {run.name}; run the same command to go on", flush=True)
            return 75
        cmd = [*launcher, sys.executable, "-m", "fedmpi", "--config", str(paths[run.name]), "--resume"]
        print(f"sweep: [{i}/{len(runs)}] {run.name}: {'resuming' if state == 'partial' else 'starting'}: "
              f"{shlex.join(cmd)}", flush=True)
        child = subprocess.Popen(cmd, preexec_fn=functools.partial(die_with_parent, os.getpid()))
        code = child.wait()
        if code in (75, 130):
            print(f"sweep: stopped during {run.name} (exit {code}); run the same command to go on", flush=True)
            return code
        if code == DIVERGED:
            print(f"sweep: {run.name} diverged (recorded in its summary.json); going on", flush=True)
            diverged.append(run.name)
        elif code:
            print(f"sweep: {run.name} failed with exit status {code}", file=sys.stderr, flush=True)
            failed.append(run.name)
    if failed:
        print(f"sweep: {len(failed)} of {len(runs)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"sweep: all {len(runs)} run(s) complete{f' ({len(diverged)} diverged)' if diverged else ''}", flush=True)
    return 0


def submit_array(settings: dict, runs: list[Run], paths: dict[str, Path], sbatch_args: list[str]) -> int:
    """One SLURM array job of jobs/fedavg.sbatch, task i running the i-th unfinished run."""
    todo = [r for r in runs if status(r) not in FINISHED]
    if not todo:
        print(f"sweep: all {len(runs)} run(s) complete; nothing to submit", flush=True)
        return 0
    listing = settings["out"] / "plan" / "array.txt"
    listing.write_text("".join(f"{paths[r.name].resolve()}\n" for r in todo))
    # the sweep's ranks on one node (as jobs/fedavg.sbatch's #SBATCH lines), unless the arguments after --
    # size the tasks themselves
    ranks = settings["ranks"]
    sized = any(a.startswith(("--ntasks", "-n", "-N", "--nodes")) for a in sbatch_args)
    sizes = [] if sized else [f"--ntasks={ranks}", f"--ntasks-per-node={ranks}"]
    cmd = ["sbatch", f"--array=0-{len(todo) - 1}", f"--job-name=sweep-{settings['out'].name}",
           f"--output={settings['out'].resolve()}/slurm-%A_%a.out", *sizes, *sbatch_args, str(SBATCH_SCRIPT),
           str(listing)]
    print(f"sweep: submitting {len(todo)} run(s): {shlex.join(cmd)}", flush=True)
    return subprocess.run(cmd).returncode


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m fedmpi.sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("sweep", help="sweep file (TOML with out, ranks, [base], [grid], [[rows]])")
    p.add_argument("--list", action="store_true", help="print each run's name, state and folder; run nothing")
    p.add_argument("--launcher", help="MPI launcher command (default: mpiexec -n RANKS, the venv's mpiexec "
                   "if it has one)")
    p.add_argument("--slurm", action="store_true", help="submit the unfinished runs as one SLURM array job "
                   "(arguments after -- go to sbatch, e.g. -- --time=02:00:00 --ntasks-per-node=3)")
    args, rest = p.parse_known_args(argv)
    if rest and (rest[0] != "--" or not args.slurm):
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        settings, runs = load_sweep(args.sweep)
        if args.list:
            for run in runs:
                print(f"{run.name}\t{status(run)}\t{run.folder()}")
            return 0
        # One sweep runner per folder, and the lock first: a refused sweep must not rewrite the plan that
        # the running one reads its next run's config from.
        settings["out"].mkdir(parents=True, exist_ok=True)
        hold_lock(settings["out"] / ".fedmpi-sweep", "sweep folder")
        paths = write_plan(settings, runs)
        if args.slurm:
            return submit_array(settings, runs, paths, rest[1:])
        launcher = shlex.split(args.launcher) if args.launcher else default_launcher(settings["ranks"])
        return run_locally(runs, paths, launcher)
    except FedMPIError as e:
        print(f"fedmpi.sweep: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
