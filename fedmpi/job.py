"""One training job: setup that every rank does alike, then the round loop.

Setup errors (bad config, missing federation, existing run folder) are
found before any collective, agreed on by all ranks and reported once.
Errors after that are rank-specific and end the whole job via Abort.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedmpi.comm import Comm, threads_per_rank
from fedmpi.config import RunConfig
from fedmpi.data import Federation
from fedmpi.errors import FedMPIError
from fedmpi.fedavg import FlatModel, RoundSums, plan_round
from fedmpi.models import build_model


@dataclass
class Setup:
    cfg: RunConfig
    fed: Federation
    device: torch.device
    run_dir: Path


def choose_device(requested: str, comm: Comm) -> torch.device:
    """CPU, or the GPU `local rank mod visible GPUs` (DESIGN.md property 7)."""
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


def prepare(cfg: RunConfig, comm: Comm, overwrite: bool) -> Setup:
    """Checks that need no collective; raises FedMPIError on every rank that finds a problem."""
    fed = Federation(cfg.data)
    if comm.num_workers > fed.num_clients:
        raise FedMPIError(f"{comm.size} ranks give {comm.num_workers} workers but the federation has only "
                          f"{fed.num_clients} clients; use at most {fed.num_clients + 1} ranks")
    device = choose_device(cfg.device, comm) if comm.is_worker else torch.device("cpu")
    run_dir = Path(cfg.out)
    if comm.is_server:
        if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
            raise FedMPIError(f"run folder {run_dir} exists; pass --overwrite to replace it "
                              "or choose another --out")
        if run_dir.exists() and overwrite:
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    return Setup(cfg, fed, device, run_dir)


def train(setup: Setup, comm: Comm) -> None:
    """The round loop. Step t broadcasts w_t, evaluates it if due, trains round t+1, reduces."""
    from fedmpi.server import Server
    from fedmpi.worker import Worker

    cfg, fed = setup.cfg, setup.fed
    torch.set_num_threads(threads_per_rank(comm, cfg.threads))
    model = build_model(cfg.model, fed.image_shape, fed.num_classes, cfg.seed)
    flat = FlatModel(model, setup.device)
    weights = np.empty(flat.dim, dtype=np.float32)
    m = cfg.clients_per_round(fed.num_clients)
    sums = RoundSums(flat.dim, m)
    server = worker = None
    if comm.is_server:
        weights[:] = flat.weights.cpu().numpy()
        (setup.run_dir / "config.toml").write_text(cfg.to_toml())
        server = Server(cfg, setup.run_dir, weights, comm.size)
        print(f"fedmpi: {cfg.model} on {fed.folder} ({fed.num_clients} clients, {m} per round), "
              f"{comm.size} rank(s), {comm.num_workers} worker(s), device {setup.device if comm.is_worker else 'cpu'}"
              f", {torch.get_num_threads()} thread(s)/rank; writing {setup.run_dir}", flush=True)
    if comm.is_worker:
        worker = Worker(cfg, fed, flat, comm.worker_index, comm.num_workers, setup.device)

    for step in range(0, cfg.rounds + 1):
        started = time.perf_counter()
        bcast_seconds = comm.bcast(weights)
        sums.buffer.fill(0.0)
        round_ = step + 1 if step < cfg.rounds else None
        sampled = plan_round(cfg.seed, round_, fed.num_clients, m) if round_ else np.empty(0, dtype=np.int64)
        if worker:
            worker.step(weights, round_, sampled, step % cfg.eval_every == 0 or step == cfg.rounds, sums)
        reduce_seconds = comm.reduce_sum(sums.buffer)
        if server:
            server.end_step(step, sampled, sums, {
                "seconds": round(time.perf_counter() - started, 6), "bcast": round(bcast_seconds, 6),
                "reduce": round(reduce_seconds, 6), "train_sum": round(sums["train_seconds"], 6),
                "eval_sum": round(sums["eval_seconds"], 6)})
    if server:
        flat.weights.copy_(torch.from_numpy(weights))
        server.finish(flat.model)
        print(f"fedmpi: done; outputs in {setup.run_dir} (metrics.jsonl, summary.json, model.pt)", flush=True)
