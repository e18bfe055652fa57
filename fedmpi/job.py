"""One training job: setup that every rank does alike, then the round loop.

Setup (config, federation, run folder, checkpoint, model, this rank's shards and engine) runs
before any collective; its errors are agreed on by all ranks and reported
once, and nothing is written until every rank has passed it. Errors after
that are rank-specific and end the whole job via Abort.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable
from pathlib import Path

import numpy as np
import torch

from fedmpi import algorithms
from fedmpi.algorithms.base import Algorithm
from fedmpi.checkpoint import NAME as CHECKPOINT, Resumption, check_model
from fedmpi.comm import Comm, threads_per_rank
from fedmpi.config import RunConfig
from fedmpi.data import Federation
from fedmpi.errors import DIVERGED, FedMPIError
from fedmpi.engine import FlatModel
from fedmpi.fedavg import RoundSums, plan_evaluation
from fedmpi.files import remove_leftovers, write_atomically
from fedmpi.models import PAPER_PARAMETERS, build_model, count_parameters
from fedmpi.runfolder import MARKER, RunFolder, announce
from fedmpi.signals import INTERRUPTED, REQUEUE, StopRequests
from fedmpi.schedule import AsyncSchedule, VersionStore
from fedmpi.system import Inputs, SystemModel
from fedmpi.worker import Worker, load_shards

TARGET_REACHED = -1  # broadcast command: the last evaluated weights reached cfg.target_accuracy


@dataclass
class Setup:
    cfg: RunConfig
    fed: Federation
    run_dir: Path
    folder: RunFolder | None      # the claimed run folder, on rank 0
    flat: FlatModel               # the model, on this rank's device
    algorithm: Algorithm          # the federated optimizer (its server state lives on rank 0)
    worker: Worker | None         # this rank's clients and engine; None on a server-only rank
    resumption: Resumption | None  # rank 0's: None to start at round 0 in an emptied run folder
    system: SystemModel           # the clients' simulated systems: each round's work and virtual time
    schedule: AsyncSchedule | None  # asynchronous execution's server updates; None: synchronous rounds


def choose_device(requested: str, comm: Comm) -> torch.device:
    """CPU, or the GPU `local rank mod visible GPUs` (so ranks of a node share its GPUs evenly)."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise FedMPIError(f"config field 'device': '{requested}' requested but CUDA is not available here")
    if requested.startswith("cuda:"):
        index = requested.split(":", 1)[1]
        if not index.isdigit() or int(index) >= torch.cuda.device_count():
            raise FedMPIError(f"config field 'device': '{requested}' does not exist "
                              f"({torch.cuda.device_count()} GPU(s) visible)")
        return torch.device(requested)
    return torch.device("cuda", comm.local_rank % torch.cuda.device_count())


def prepare(cfg: RunConfig, fed: Federation, comm: Comm, folder: RunFolder | None, resumption: Resumption | None,
            begin: Callable[[str], None], shards: tuple[dict, tuple] | None, system_inputs: Inputs) -> Setup:
    """Every check and read that needs no collective; raises FedMPIError where a rank finds a problem.

    `folder` is the run folder rank 0 claimed (None on other ranks); `begin` names each stage
    (startup.Startup.begin), for the line that ends a set-up that hangs; `shards`: a worker's, from
    fedavg.read_home_shards (None on rank 0); `system_inputs`: system.read_inputs's; `resumption`: rank 0's
    checkpoint.read_resumption, None to start afresh (all three read before torch)."""
    run_dir = Path(cfg.out)
    begin("building the model")
    device = choose_device(cfg.device, comm) if comm.is_worker else torch.device("cpu")
    torch.set_num_threads(threads_per_rank(comm, cfg.threads))
    dtype = torch.float64 if cfg.precision == "float64" else torch.float32
    flat = FlatModel(build_model(cfg.model, fed.input_shape, fed.num_classes, cfg.seed), device, dtype)
    if resumption:
        check_model(resumption.checkpoint, flat.signature(), run_dir / CHECKPOINT)
    algorithm = algorithms.build(cfg, fed.num_clients, cfg.clients_per_round(fed.num_clients), flat.dim,
                                 flat.num_params, flat.logical_order().numpy(), comm.is_server)
    system = SystemModel(cfg, fed.sizes, flat.dim * flat.weights.element_size(), algorithm.partial_work,
                         system_inputs)
    schedule = AsyncSchedule(cfg, system, fed.num_clients) if cfg.execution == "async" else None
    worker = None
    if comm.is_worker:
        worker = Worker(cfg, fed, flat, load_shards(shards, device), comm.worker_index, comm.num_workers, algorithm)
    return Setup(cfg, fed, run_dir, folder, flat, algorithm, worker, resumption, system, schedule)


def train(setup: Setup, comm: Comm, stops: StopRequests) -> int:
    """The round loop; returns the exit status (0, or the stop request's).

    Step t broadcasts [w_t | command | the algorithm's values for round t+1], evaluates w_t if due,
    trains round t+1 and reduces. A non-zero command tells every rank to stop with that status,
    or (TARGET_REACHED) to finish normally with w_t.
    """
    from fedmpi.server import Server

    cfg, fed, flat, worker, algorithm = setup.cfg, setup.fed, setup.flat, setup.worker, setup.algorithm
    # [weights | command | algorithm's extra], in the training dtype
    packet = np.zeros(flat.dim + 1 + algorithm.broadcast_extra,
                      dtype=np.float64 if cfg.precision == "float64" else np.float32)
    weights, extra = packet[:flat.dim], packet[flat.dim + 1:]
    command = flat.dim
    m = cfg.clients_per_round(fed.num_clients)
    evaluated = plan_evaluation(cfg.seed, fed.num_clients, cfg.clients_to_evaluate(fed.num_clients))
    sums = RoundSums(flat.dim, algorithm.reduction_extra, m, algorithm.scalars, len(evaluated))
    resume = setup.resumption.checkpoint if setup.resumption else None
    start = comm.world.bcast(resume.round if resume else 0, root=0)
    trainers = comm.world.gather(f"{flat.weights.device}: {worker.engine.describe()}" if worker else None, root=0)
    if setup.system.trace is not None:  # who is online depends on the clock: replay the rounds before `start`
        for round_ in range(1, start + 1):
            setup.system.plan(round_, setup.system.sample(round_, m))
    store = None  # asynchronous: the model versions that clients still train from, on every rank
    if setup.schedule:
        store = comm.world.bcast(VersionStore.from_state(resume.state if resume else {})
                                 if comm.is_server else None, root=0)
    server = None
    if comm.is_server:
        announce(setup.folder.fd, setup.folder.path / MARKER)
        if resume is None:
            setup.folder.reset()
        remove_leftovers(setup.run_dir)
        write_atomically(setup.run_dir / "config.toml", cfg.to_toml().encode())
        weights[:] = flat.weights.cpu().numpy()
        server = Server(cfg, setup.run_dir, weights, fed.fingerprint, comm.size, comm.num_workers,
                        setup.resumption, algorithm, flat.signature(), evaluated, store)
        idle = f" + {comm.idle_ranks} idle (more ranks than cores; see workers_per_node)" if comm.idle_ranks else ""
        paper = f"; the paper: {PAPER_PARAMETERS[cfg.model]}" if cfg.model in PAPER_PARAMETERS else ""
        print(f"fedmpi: {cfg.model} ({count_parameters(flat.model):,} parameters{paper}; {cfg.precision}) on "
              f"{fed.folder} ({fed.num_clients} "
              f"clients, {m} per round), {comm.size} rank(s), {comm.num_workers} worker(s){idle}, "
              f"{torch.get_num_threads()} thread(s)/rank; "
              f"{f'resuming at round {start}' if start else 'writing'} {setup.run_dir}", flush=True)
        print(_algorithm_line(cfg, algorithm), flush=True)
        if len(evaluated):
            print(_evaluation_line(cfg, fed, evaluated), flush=True)
        kinds = {t: sum(x == t for x in trainers) for t in trainers if t is not None}
        print("fedmpi: workers train on " + "; ".join(f"{t}{f' ({n} workers)' if len(kinds) > 1 else ''}"
                                                     for t, n in kinds.items()), flush=True)

    for step in range(start, cfg.rounds + 1):
        started = time.perf_counter()
        round_ = step + 1 if step < cfg.rounds else None
        if setup.schedule:
            sampled, plan = setup.schedule.plan(round_)
        else:
            sampled = setup.system.sample(round_, m)
            plan = setup.system.plan(round_, sampled)
        if server and round_:
            algorithm.fill_broadcast(extra, sampled)
        bcast_seconds = comm.bcast(packet)
        if packet[command] in (TARGET_REACHED, DIVERGED):
            break
        if packet[command]:
            return _stopped(int(packet[command]), server, setup.run_dir, step)
        sums.buffer.fill(0.0)
        if store is not None and round_:
            store.keep(step, weights, setup.schedule.needed(step))
        if worker:
            worker.step(weights, extra, round_, sampled, plan, step % cfg.eval_every == 0 or step == cfg.rounds, sums,
                        store and store.versions)
        # Read after training, so a request that came during this round stops the job after it.
        sums.add("requeue_requests", stops.exit_code == REQUEUE)
        sums.add("interrupt_requests", stops.exit_code == INTERRUPTED)
        reduce_seconds = comm.reduce_sum(sums.buffer)  # (hi, lo) pairs
        if server:
            server.end_step(step, sampled, plan, sums, {
                "seconds": round(time.perf_counter() - started, 6), "bcast": round(bcast_seconds, 6),
                "reduce": round(reduce_seconds, 6), "train_sum": round(sums["train_seconds"], 6),
                "eval_sum": round(sums["eval_seconds"], 6)})
            if server.target_round is not None:
                packet[command] = TARGET_REACHED
            elif server.diverged:
                packet[command] = DIVERGED
            elif (sums["interrupt_requests"] or sums["requeue_requests"]) and step < cfg.rounds:
                server.checkpoint(step + 1)
                packet[command] = INTERRUPTED if sums["interrupt_requests"] else REQUEUE
    if server:
        server.finish(flat)
        if server.diverged:
            _report_divergence(server.diverged, cfg.on_bad_update)
        else:
            more = (", model_best.pt" if server.best_weights is not None else "") + \
                (", client_accuracy.jsonl" if server.client_eval else "")
            print(f"fedmpi: done; outputs in {setup.run_dir} (metrics.jsonl, summary.json, model.pt{more})",
                  flush=True)
    return DIVERGED if packet[command] == DIVERGED else 0


def _algorithm_line(cfg: RunConfig, algorithm: Algorithm) -> str:
    """What trains: the algorithm with its settings, the server step, DP (the start line names the model)."""
    settings = {"μ": cfg.prox_mu} if cfg.algorithm == "fedprox" else cfg.algorithm_args
    named = "".join(f"{'; ' if i else ' ('}{k} {v:g}" if isinstance(v, float) else f"{'; ' if i else ' ('}{k} {v}"
                    for i, (k, v) in enumerate(settings.items())) + (")" if settings else "")
    parts = [(algorithm.inner if cfg.dp_clip else algorithm).title + named,
             f"clients: E {cfg.epochs}, B {cfg.batch_size or '∞'}, η {cfg.lr:g}"
             + (f", momentum {cfg.client_momentum:g}" if cfg.client_momentum else "")
             + (f", weight decay {cfg.weight_decay:g}" if cfg.weight_decay else ""),
             f"server: {cfg.server_optimizer}, η {cfg.server_lr:g}"]
    if cfg.dp_clip:
        parts.append(f"DP: clip {cfg.dp_clip:g}, noise multiplier {cfg.dp_noise_multiplier:g}, δ {cfg.dp_delta:g}")
    return "fedmpi: algorithm " + "; ".join(parts)


def _evaluation_line(cfg: RunConfig, fed: Federation, evaluated: np.ndarray) -> str:
    """Who federated evaluation measures, and how often."""
    without = int(np.count_nonzero(fed.test_sizes[evaluated] == 0))
    return (f"fedmpi: federated evaluation: {len(evaluated)} of {fed.num_clients} clients (eval_clients "
            f"{cfg.eval_clients:g}; one set for the run, drawn from the seed) on their own test sets "
            f"({int(fed.test_sizes[evaluated].sum()):,} examples"
            f"{f'; {without} client(s) without any, left out' if without else ''}), every evaluated round; "
            f"per client in {Path(cfg.out) / 'client_accuracy.jsonl'}")


def _report_divergence(diverged: dict, policy: str) -> None:
    round_, clients = diverged["round"], diverged["clients"]
    if diverged.get("server"):
        print(f"fedmpi: error: round {round_}: the server's update is non-finite (NaN/Inf) although every client's "
              f"was finite: the run diverged and ends here; summary.json records it, model.pt holds the weights "
              f"of round {round_ - 1}. Lower server_lr, or DP's noise (dp_clip × dp_noise_multiplier) "
              f"(exit status {DIVERGED})", file=sys.stderr, flush=True)
        return
    listed = ", ".join(map(str, clients[:5])) + (f" and {len(clients) - 5} more" if len(clients) > 5 else "")
    who = "every sampled client" if policy == "skip" else f"client{'s' if len(clients) > 1 else ''} {listed}"
    print(f"fedmpi: error: round {round_}: {who} produced a non-finite update (NaN/Inf): the run diverged and "
          f"ends here; summary.json records it, model.pt holds the weights of round {round_ - 1}. Lower lr"
          f"{', or pass --on-bad-update skip to drop such clients' if policy == 'abort' else ''} "
          f"(exit status {DIVERGED})", file=sys.stderr, flush=True)


def _stopped(code: int, server, run_dir: Path, round_: int) -> int:
    if server:
        server.stop()
        print(f"fedmpi: stop requested; checkpoint of round {round_} in {run_dir / CHECKPOINT}; "
              f"continue with --resume (exit status {code})", flush=True)
    return code
