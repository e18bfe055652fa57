"""Per-round time of fedmpi against a plain sequential loop and the compute floor, in one run.

    python benchmarks/round_time.py --config A --ranks 3 5 9 --rounds 10

- sequential reference: one process, default torch threads, the round's
  clients trained one after the other with torch.optim.SGD, then averaged;
  no MPI, no fedmpi code but the data reader and the model builder.
- compute floor: the same clients trained with fedmpi's own training code
  (local_update, or fedmpi.stacked for MLPs, as the workers do), one process
  per core (1 thread each), no communication, no evaluation.
- fedmpi: `mpiexec -n P python -m fedmpi ...`, per-round seconds from
  metrics.jsonl (median over rounds 2..T), split into broadcast / reduce-wait
  / training / evaluation, and each rank's peak memory (VmHWM).
Prints a table and ratios, and appends one JSON line per run to --json.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fedmpi.data import Federation
from fedmpi.fedavg import Normalizer, FlatModel, client_generator, local_update, plan_round
from fedmpi.stacked import StackedMLP, stackable
from fedmpi.models import REGISTRY, build_model

CONFIGS = {
    "A": dict(model="2nn", epochs=1, batch_size=10, lr=0.1),
    "B": dict(model="cnn", epochs=5, batch_size=10, lr=0.05),
    "fedsgd": dict(model="cnn", epochs=1, batch_size=0, lr=0.1),
}
FRACTION, SEED = 0.1, 0


def round_clients(fed, rounds):
    m = max(int(round(FRACTION * fed.num_clients)), 1)
    return [plan_round(SEED, r, fed.num_clients, m) for r in range(1, rounds + 1)]


def sequential_reference(data_dir, cfg, rounds):
    """Seconds per round of a plain loop: torch.optim.SGD, one client after another, weighted mean."""
    fed = Federation(data_dir)
    mean = torch.tensor(fed.manifest["normalize"]["mean"]).view(-1, 1, 1)
    std = torch.tensor(fed.manifest["normalize"]["std"]).view(-1, 1, 1)
    data = {k: fed.load_client(k) for k in range(fed.num_clients)}
    torch.manual_seed(SEED)  # plain nn modules: NCHW convolutions, (out, in) Linear weights
    model = REGISTRY[cfg["model"]](tuple(fed.image_shape), fed.num_classes)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    times = []
    for clients in round_clients(fed, rounds):
        start = time.perf_counter()
        total = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in global_state.items()}
        n_total = 0
        for k in clients:
            x = (torch.from_numpy(data[k][0]).float() / 255 - mean) / std
            y = torch.from_numpy(data[k][1])
            model.load_state_dict(global_state)
            opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"])
            b = len(y) if cfg["batch_size"] == 0 else cfg["batch_size"]
            for _ in range(cfg["epochs"]):
                perm = torch.randperm(len(y))
                for i in range(0, len(y), b):
                    opt.zero_grad()
                    F.cross_entropy(model(x[perm[i:i + b]]), y[perm[i:i + b]]).backward()
                    opt.step()
            for name, v in model.state_dict().items():
                total[name] += len(y) * v.double()
            n_total += len(y)
        global_state = {k: (v / n_total).float() for k, v in total.items()}
        times.append(time.perf_counter() - start)
    return times


def _floor_worker(args):
    data_dir, cfg, rounds, part, parts = args
    torch.set_num_threads(1)
    fed = Federation(data_dir)
    norm = Normalizer(fed.manifest["normalize"]["mean"], fed.manifest["normalize"]["std"], "cpu")
    flat = FlatModel(build_model(cfg["model"], fed.image_shape, fed.num_classes, SEED), torch.device("cpu"))
    start_weights = flat.weights.clone()
    plans = round_clients(fed, rounds)
    data = {int(k): tuple(map(torch.from_numpy, fed.load_client(int(k)))) for p in plans for k in p[part::parts]}
    times = []
    stacked = StackedMLP(flat) if stackable(flat) else None
    for r, clients in enumerate(plans, start=1):
        start = time.perf_counter()
        mine = [int(k) for k in clients[part::parts]]
        if stacked:  # as fedmpi's workers train MLPs: all their clients at once
            stacked.train(start_weights, [data[k] for k in mine], [client_generator(SEED, r, k) for k in mine],
                          cfg["epochs"], cfg["batch_size"], cfg["lr"], norm)
        for k in [] if stacked else mine:
            flat.weights.copy_(start_weights)
            local_update(flat, *data[k], cfg["epochs"], cfg["batch_size"], cfg["lr"],
                         client_generator(SEED, r, k), norm)
        times.append(time.perf_counter() - start)
    return times


def compute_floor(data_dir, cfg, rounds, processes):
    """Per round, the slowest of `processes` single-thread processes training their share of the clients."""
    with mp.get_context("spawn").Pool(processes) as pool:
        per_process = pool.map(_floor_worker, [(data_dir, cfg, rounds, i, processes) for i in range(processes)])
    return [max(ts) for ts in zip(*per_process)]


def peak_memory_mb(marker):
    """{pid: VmHWM MB} of running fedmpi ranks (not the launcher) whose command line contains marker."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            if marker in argv and "mpiexec" not in argv[0]:
                status = Path(f"/proc/{pid}/status").read_text()
                found[pid] = int(status.split("VmHWM:")[1].split()[0]) / 1024
        except (OSError, IndexError):
            continue
    return found


def run_fedmpi(data_dir, cfg, rounds, ranks, eval_every, threads):
    out = Path(tempfile.mkdtemp(prefix="fedmpi-bench-")) / "run"
    mpiexec = str(Path(sys.executable).parent / "mpiexec")
    cmd = [mpiexec, "-n", str(ranks), sys.executable, "-m", "fedmpi", "--data", str(data_dir), "--out", str(out),
           "--model", cfg["model"], "--fraction", str(FRACTION), "--epochs", str(cfg["epochs"]),
           "--batch-size", str(cfg["batch_size"]), "--lr", str(cfg["lr"]), "--rounds", str(rounds),
           "--seed", str(SEED), "--eval-every", str(eval_every), "--checkpoint-every", "0"]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks = {}
    while proc.poll() is None:
        for pid, mb in peak_memory_mb(str(out)).items():
            peaks[pid] = max(peaks.get(pid, 0), mb)
        time.sleep(0.2)
    stdout, stderr = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"fedmpi failed:\n{stdout}\n{stderr}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [r["time"] for r in records if "time" in r][1:]  # round 1 includes warm-up
    split = {k: statistics.median(t[k] for t in timed) for k in timed[0]}
    accuracy = [r["test_accuracy"] for r in records if "test_accuracy" in r][-1]
    return split, accuracy, sorted(peaks.values())


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", choices=CONFIGS, default="A")
    p.add_argument("--data", default="data/mnist-iid-100")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--ranks", type=int, nargs="+", default=[3])
    p.add_argument("--eval-every", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="fedmpi --threads (0: its default)")
    p.add_argument("--json", default="runs/bench/results.jsonl")
    args = p.parse_args()
    cfg = CONFIGS[args.config]
    if not Path(args.data, "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "data_prep", "--dataset", "mnist", "--partition", "iid",
                        "--clients", "100", "--out", args.data], check=True)
    cores = len(os.sched_getaffinity(0))
    seq = statistics.median(sequential_reference(args.data, cfg, args.rounds)[1:])
    floor = statistics.median(compute_floor(args.data, cfg, args.rounds, cores)[1:])
    print(f"config {args.config} {cfg}, C={FRACTION}, {args.rounds} rounds, {cores} cores, "
          f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
    print(f"sequential reference  {seq:8.4f} s/round")
    print(f"compute floor         {floor:8.4f} s/round ({cores} processes x 1 thread)")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    base = None
    for ranks in args.ranks:
        split, acc, peaks = run_fedmpi(args.data, cfg, args.rounds, ranks, args.eval_every, args.threads)
        base = base or split["seconds"]
        print(f"fedmpi -n {ranks:<2}          {split['seconds']:8.4f} s/round  "
              f"(bcast {split['bcast']:.4f}, reduce wait {split['reduce']:.4f}, train sum {split['train_sum']:.4f}, "
              f"eval sum {split['eval_sum']:.4f}); fedmpi/sequential {split['seconds'] / seq:.2f}, "
              f"fedmpi/floor {split['seconds'] / floor:.2f}, vs first P {split['seconds'] / base:.2f}; "
              f"accuracy {acc:.4f}; peak MB per process {[round(x) for x in peaks]}")
        with open(args.json, "a") as f:
            f.write(json.dumps({"config": args.config, **cfg, "ranks": ranks, "rounds": args.rounds,
                                "eval_every": args.eval_every, "sequential_s": seq, "floor_s": floor,
                                "fedmpi": split, "accuracy": acc, "peak_mb": peaks,
                                "date": time.strftime("%Y-%m-%d")}) + "\n")


if __name__ == "__main__":
    main()
