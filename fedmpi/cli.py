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

from fedmpi import __version__, models
from fedmpi.config import FIELD_NAMES
from fedmpi.errors import ArgumentParser, FedMPIError

FLAG_HELP = {
    "data": "federation folder written by python -m data_prep",
    "model": models.help_text(),
    "fraction": "C, share of clients per round (0 = one client)",
    "epochs": "E, local epochs",
    "batch_size": "B, local minibatch size; 0 or inf = the whole local set (FedSGD: E=1, B=inf)",
    "lr": "η, client learning rate",
    "rounds": "T, communication rounds",
    "seed": "seed of model init, client sampling and shuffling",
    "out": "run folder for config.toml, metrics.jsonl, summary.json, model.pt",
    "eval_every": "evaluate the global model every N rounds (always the last)",
    "checkpoint_every": "write a checkpoint every N rounds (always the last)",
    "on_bad_update": "abort (end the run as diverged, exit 3) | skip (leave the client out): a NaN/Inf update",
    "device": "auto | cpu | cuda | cuda:N (auto: GPU local_rank mod #GPUs, else CPU)",
    "threads": "torch threads per rank (0 = OMP_NUM_THREADS, else the rank's CPU binding, "
               "else node cores / worker ranks)",
    "target_accuracy": "stop once the test accuracy reaches this (e.g. 0.99); 0 = run all rounds",
    "workers_per_node": "ranks per node that host clients (0 = the node's cores; further ranks wait idle)",
    "precision": "float32 | float64: dtype of the weights and the training (float64 to check numerics)",
    "stack_clients": "most clients a worker trains together (0 = auto, 1 = one at a time; see docs/architecture.md)",
    "algorithm": "fedavg | fedprox | scaffold",
    "prox_mu": "FedProx's μ (algorithm fedprox)",
    "server_optimizer": "sgd | momentum | adam | yogi | adagrad: how the server applies the averaged update",
    "server_lr": "the server's learning rate (sgd with 1: FedAvg)",
    "server_momentum": "server momentum (server_optimizer momentum: FedAvgM)",
    "server_beta1": "adam, yogi, adagrad: first-moment decay β1",
    "server_beta2": "adam, yogi: second-moment decay β2",
    "server_tau": "adam, yogi, adagrad: adaptivity τ",
    "dp_clip": "DP-FedAvg: clip each client's update to this L2 norm (0 = no DP)",
    "dp_noise_multiplier": "DP-FedAvg: Gaussian noise of std z × dp_clip on the sum of updates",
    "dp_delta": "DP-FedAvg: δ of the (ε, δ) written every round",
    "setup_timeout": "seconds set-up may take (imports, model, shards) before the job ends with one line "
                     "naming the ranks that had not finished; 0 = no limit",
}


def parse_args(argv):
    p = ArgumentParser(prog="python -m fedmpi", description="Federated Averaging over MPI (rank 0 = server).")
    p.add_argument("--config", help="TOML file with any of the fields below; flags override it")
    for name in FIELD_NAMES:
        p.add_argument("--" + name.replace("_", "-"), dest=name, help=FLAG_HELP[name])
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


def main(argv=None) -> int:
    """One job, on every rank; returns its exit status. Called again in the same process (fedmpi.run),
    it starts a new job: the run folder's lock, the signal handlers and the set-up watchdog end with it."""
    from fedmpi.config import DEFAULT_SETUP_TIMEOUT_S
    from fedmpi.signals import StopRequests
    from fedmpi.startup import Startup

    stops = StopRequests()  # first: a SLURM signal during the imports must not kill the job
    startup = Startup(stops, DEFAULT_SETUP_TIMEOUT_S)  # every rank agrees on set-up, which never hangs
    try:
        return _job(argv, stops, startup)
    finally:
        startup.finish()
        if startup.folder:
            startup.folder.unlock()
        stops.restore()


def _job(argv, stops, startup) -> int:
    from fedmpi.comm import Comm, omp_threads
    from fedmpi.config import build_config
    from fedmpi.data import Federation
    from fedmpi.runfolder import NEW, OVERWRITE, RESUME, RunFolder

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
        if comm.is_server:
            startup.folder = RunFolder.claim(cfg.out, RESUME if args.resume else OVERWRITE if args.overwrite else NEW)
    except BaseException as e:  # agreed on below (SystemExit and KeyboardInterrupt too): no rank waits for it
        error = e
    status = startup.agree(error)
    if status is None:
        try:
            startup.begin("importing torch")
            from fedmpi.job import prepare, train
            setup = prepare(cfg, fed, comm, startup.folder, args.resume, startup.begin)
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
