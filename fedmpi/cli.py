"""`python -m fedmpi`: parse the config, set up every rank, train; one-line errors.

torch is imported only after the config and the federation's manifest are
checked, so a typo costs a fraction of a second instead of a torch import per rank.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback

from fedmpi import __version__
from fedmpi.config import FIELD_HELP, FIELD_NAMES, RunConfig
from fedmpi.errors import ArgumentParser, FedMPIError

def parse_args(argv):
    p = ArgumentParser(prog="python -m fedmpi", description="Federated Averaging over MPI (rank 0 = server).")
    p.add_argument("--config", help="TOML file with any of the fields below; flags override it")
    defaults = vars(RunConfig())
    for name in FIELD_NAMES:
        default = f"default {defaults[name]}" if defaults[name] != "" else "required"
        p.add_argument("--" + name.replace("_", "-"), dest=name, help=f"{FIELD_HELP[name]} ({default})")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--version", action="version", version=f"fedmpi {__version__}")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint (starts fresh if it has none)")
    return p.parse_args(argv)


def check_one_world(comm, stops) -> bool:
    """srun with an --mpi plugin that this MPI does not speak starts each task as a world of one
    (open-mpi/ompi#13523), each about to train alone into the same run folder. Task 0 raises the
    one-line error; the others return True once srun stops them after task 0 has ended (ending first,
    they would make srun --kill-on-bad-exit kill task 0 before it said why), or after 10 s."""
    tasks = int(os.environ.get("SLURM_STEP_NUM_TASKS") or 1)
    if comm.size > 1 or tasks <= 1:
        return False
    if os.environ.get("SLURM_PROCID", "0") == "0":
        raise FedMPIError(f"srun started {tasks} tasks but MPI sees a world of 1 in each: srun's PMI plugin does "
                          "not match this MPI (pip's MPICH: --mpi=pmi2; Open MPI 5: --mpi=pmix; "
                          "jobs/fedavg.sbatch: FEDMPI_SRUN_MPI); nothing was written")
    deadline = time.monotonic() + 10
    while not stops.exit_code and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def import_job(own_process: bool):
    """fedmpi.job's prepare and train (torch is imported with them).

    In a process of its own (`python -m fedmpi`) the import runs with the cyclic garbage collector off, and
    what it made is then moved to the collector's permanent generation (gc.freeze): torch's import makes
    objects by the hundred thousand, which the collections during the import, and every full collection
    after it, walked again and again for nothing (a 3-rank job that stops after set-up: 5.5-5.8 -> 3.7-3.8 s
    of user CPU time; disabling the collector without freezing gained nothing). Not in a caller's process
    (fedmpi.run): its own objects stay collectable."""
    if not own_process:
        from fedmpi.job import prepare, train
        return prepare, train
    import gc

    gc.disable()
    try:
        from fedmpi.job import prepare, train
    finally:
        gc.freeze()
        gc.enable()
    return prepare, train


def main(argv=None, *, exiting: bool = False) -> int:
    """One job, on every rank; returns its exit status. Called again in the same process (fedmpi.run),
    it starts a new job: the run folder's lock, the signal handlers and the set-up watchdog end with it.
    `exiting` (python -m fedmpi): the process exits next, so stop signals are then ignored, not restored."""
    from fedmpi.config import DEFAULT_SETUP_TIMEOUT_S
    from fedmpi.signals import StopRequests
    from fedmpi.startup import Startup

    stops = StopRequests()  # first: a SLURM signal during the imports must not kill the job
    startup = Startup(stops, DEFAULT_SETUP_TIMEOUT_S)  # every rank agrees on set-up, which never hangs
    try:
        return _job(argv, stops, startup, exiting)
    finally:
        startup.finish()
        if startup.folder:
            startup.folder.unlock()
        stops.ignore() if exiting else stops.restore()


def _job(argv, stops, startup, exiting: bool) -> int:
    from pathlib import Path

    from fedmpi import models, sinks
    from fedmpi.checkpoint import read_resumption
    from fedmpi.comm import Comm, omp_threads
    from fedmpi.config import build_config
    from fedmpi.data import Federation
    from fedmpi.fedavg import read_home_shards
    from fedmpi.runfolder import NEW, OVERWRITE, RESUME, RunFolder
    from fedmpi.system import read_inputs

    comm = startup.comm = Comm()
    startup.begin("reading the config and the federation")
    error = None
    try:  # before torch is imported: a typo, or a run folder in use, is answered in a second
        if check_one_world(comm, stops):
            return 2
        with contextlib.redirect_stdout(open(os.devnull, "w") if comm.rank else sys.stdout):
            try:
                args = parse_args(argv)
            except SystemExit as e:  # --help, --version: printed by rank 0 only; every rank parses alike
                return e.code or 0
        cfg = build_config(args.config, {k: getattr(args, k) for k in FIELD_NAMES})
        startup.timeout_s = cfg.setup_timeout
        omp_threads()
        comm.set_workers(cfg.workers_per_node)
        fed = Federation(cfg.data)
        if why := models.check_fits(cfg.model, fed.kind):
            raise FedMPIError(f"config field 'model': {why}")
        if cfg.eval_clients:
            fed.require_client_tests()
        system_inputs = read_inputs(cfg, fed.num_clients)
        if comm.num_workers > fed.num_clients:
            raise FedMPIError(f"{comm.size} ranks give {comm.num_workers} workers but the federation {fed.folder} "
                              f"has only {fed.num_clients} clients; use at most {fed.num_clients + 1} ranks")
        shards, resumption = None, None
        if comm.is_worker:  # before torch: a damaged shard is one line within a second
            startup.begin("reading the shards")
            shards = read_home_shards(fed, comm.worker_index, comm.num_workers)
        if comm.is_server:
            startup.folder = RunFolder.claim(cfg.out, RESUME if args.resume else OVERWRITE if args.overwrite else NEW)
            if args.resume:
                startup.begin("reading the checkpoint")
                resumption = read_resumption(Path(cfg.out), cfg, fed.fingerprint)
            sinks.check(cfg)
    except BaseException as e:  # agreed on below (SystemExit and KeyboardInterrupt too): no rank waits for it
        error = e
    status = startup.agree(error)
    if status is None:
        try:
            startup.begin("importing torch")
            prepare, train = import_job(own_process=exiting)
            setup = prepare(cfg, fed, comm, startup.folder, resumption, startup.begin, shards, system_inputs)
        except BaseException as e:
            error = e
        status = startup.agree(error)
    if status is not None:
        if startup.folder:
            startup.folder.release_unused()
        return status
    startup.finish()
    try:
        return train(setup, comm, stops)
    except FedMPIError as e:
        print(f"fedmpi: rank {comm.rank}: error: {e}", file=sys.stderr, flush=True)
        comm.abort(2)
    except BaseException as e:  # a bug or a signal: never leave the other ranks waiting
        traceback.print_exc()
        print(f"fedmpi: rank {comm.rank}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        comm.abort(1)
