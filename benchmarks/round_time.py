"""Per-round time of fedmpi against a plain sequential loop and the compute floor, in one run.

    python benchmarks/round_time.py --config A --ranks 3 5 9 --rounds 10
    python benchmarks/round_time.py --config B --device cuda --ranks 2 --rounds 5    # a GPU node

- sequential reference: one process, default torch threads, the round's
  clients trained one after the other with torch.optim.SGD, then averaged;
  no MPI, no fedmpi code but the data reader and the model builder.
- compute floor: the same clients trained with fedmpi's own client engine
  (fedmpi.engine, as the workers use it), on a CPU one process per core
  (1 thread each), on a GPU one process; no communication, no evaluation.
- fedmpi: `mpiexec -n P python -m fedmpi ...`, per-round seconds from
  metrics.jsonl (median over rounds 2..T), split into broadcast / reduce-wait
  / training / evaluation, each rank's peak memory (VmHWM) and, on a GPU,
  each process's GPU memory (nvidia-smi).
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
from fedmpi.engine import Engine, FlatModel
from fedmpi.engine.inputs import Normalizer
from fedmpi.fedavg import client_generator, plan_round
from fedmpi.models import build_model, resolve

CONFIGS = {
    "A": dict(model="2nn", epochs=1, batch_size=10, lr=0.1, fraction=0.1),
    "B": dict(model="cnn", epochs=5, batch_size=10, lr=0.05, fraction=0.1),
    "B-all": dict(model="cnn", epochs=5, batch_size=10, lr=0.05, fraction=1.0),  # C = 1: 100 clients a round
    "fedsgd": dict(model="cnn", epochs=1, batch_size=0, lr=0.1, fraction=0.1),
}
SEED = 0


def round_clients(fed, cfg, rounds):
    m = max(int(round(cfg["fraction"] * fed.num_clients)), 1)
    return [plan_round(SEED, r, fed.num_clients, m) for r in range(1, rounds + 1)]


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def sequential_reference(data_dir, cfg, rounds, device):
    """Seconds per round of a plain loop: torch.optim.SGD, one client after another, weighted mean."""
    fed = Federation(data_dir)
    mean = torch.tensor(fed.manifest["normalize"]["mean"], device=device).view(-1, 1, 1)
    std = torch.tensor(fed.manifest["normalize"]["std"], device=device).view(-1, 1, 1)
    data = {k: tuple(torch.from_numpy(a).to(device) for a in fed.load_client(k)) for k in range(fed.num_clients)}
    torch.manual_seed(SEED)  # plain nn modules: NCHW convolutions, (out, in) Linear weights
    model = resolve(cfg["model"])(tuple(fed.input_shape), fed.num_classes).to(device)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    times = []
    for clients in round_clients(fed, cfg, rounds):
        start = time.perf_counter()
        total = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in global_state.items()}
        n_total = 0
        for k in clients:
            x = (data[k][0].float() / 255 - mean) / std
            y = data[k][1]
            model.load_state_dict(global_state)
            opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"])
            b = len(y) if cfg["batch_size"] == 0 else cfg["batch_size"]
            for _ in range(cfg["epochs"]):
                perm = torch.randperm(len(y)).to(device)
                for i in range(0, len(y), b):
                    opt.zero_grad()
                    F.cross_entropy(model(x[perm[i:i + b]]), y[perm[i:i + b]]).backward()
                    opt.step()
            for name, v in model.state_dict().items():
                total[name] += len(y) * v.double()
            n_total += len(y)
        global_state = {k: (v / n_total).float() for k, v in total.items()}
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def _floor_worker(args):
    data_dir, cfg, rounds, part, parts, device = args
    torch.set_num_threads(1)
    fed = Federation(data_dir)
    norm = Normalizer(fed.manifest["normalize"]["mean"], fed.manifest["normalize"]["std"], device)
    flat = FlatModel(build_model(cfg["model"], fed.input_shape, fed.num_classes, SEED), torch.device(device))
    start_weights = flat.weights.clone()
    plans = round_clients(fed, cfg, rounds)
    data = {int(k): tuple(torch.from_numpy(a).to(device) for a in fed.load_client(int(k)))
            for p in plans for k in p[part::parts]}
    engine = Engine(flat, norm, 0, next(iter(data.values())))
    times = []
    for r, clients in enumerate(plans, start=1):
        start = time.perf_counter()
        mine = [int(k) for k in clients[part::parts]]
        for stack in engine.stacks([len(data[k][1]) for k in mine], cfg["batch_size"]):  # as fedmpi's workers do
            engine.train(start_weights, [data[mine[i]] for i in stack],
                         [client_generator(SEED, r, mine[i]) for i in stack], cfg["epochs"], cfg["batch_size"],
                         cfg["lr"])
        sync(device)
        times.append(time.perf_counter() - start)
    return times, engine.describe()


def compute_floor(data_dir, cfg, rounds, processes, device):
    """Per round, the slowest of `processes` single-thread processes training their share of the clients."""
    with mp.get_context("spawn").Pool(processes) as pool:
        results = pool.map(_floor_worker, [(data_dir, cfg, rounds, i, processes, device) for i in range(processes)])
    return [max(ts) for ts in zip(*(times for times, _ in results))], results[0][1]


def gpu_memory_mb():
    """{pid: MB} of the processes on the GPUs (nvidia-smi), {} without one."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return {int(pid): float(mb) for pid, mb in (line.split(",") for line in out.splitlines() if "," in line)}


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


def run_fedmpi(data_dir, cfg, rounds, ranks, eval_every, threads, device):
    out = Path(tempfile.mkdtemp(prefix="fedmpi-bench-")) / "run"
    mpiexec = str(Path(sys.executable).parent / "mpiexec")
    cmd = [mpiexec, "-n", str(ranks), sys.executable, "-m", "fedmpi", "--data", str(data_dir), "--out", str(out),
           "--model", cfg["model"], "--fraction", str(cfg["fraction"]), "--epochs", str(cfg["epochs"]),
           "--batch-size", str(cfg["batch_size"]), "--lr", str(cfg["lr"]), "--rounds", str(rounds),
           "--seed", str(SEED), "--eval-every", str(eval_every), "--checkpoint-every", "0", "--device", device]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks, gpu = {}, {}
    while proc.poll() is None:
        for pid, mb in peak_memory_mb(str(out)).items():
            peaks[pid] = max(peaks.get(pid, 0), mb)
        for pid, mb in gpu_memory_mb().items():
            gpu[pid] = max(gpu.get(pid, 0), mb)
        time.sleep(0.2)
    stdout, stderr = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"fedmpi failed:\n{stdout}\n{stderr}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [r["time"] for r in records if "time" in r][1:]  # round 1 includes warm-up
    split = {k: statistics.median(t[k] for t in timed) for k in timed[0]}
    accuracy = [r["test_accuracy"] for r in records if "test_accuracy" in r][-1]
    trains_on = next((line for line in stdout.splitlines() if "workers train on" in line), "")
    return split, accuracy, sorted(peaks.values()), sorted(mb for pid, mb in gpu.items() if pid in peaks), trains_on


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", choices=CONFIGS, default="A")
    p.add_argument("--data", default="data/mnist-iid-100")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--ranks", type=int, nargs="+", default=[3])
    p.add_argument("--eval-every", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="fedmpi --threads (0: its default)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--json", default="runs/bench/results.jsonl")
    args = p.parse_args()
    cfg = CONFIGS[args.config]
    if not Path(args.data, "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "data_prep", "--dataset", "mnist", "--partition", "iid",
                        "--clients", "100", "--out", args.data], check=True)
    cores = len(os.sched_getaffinity(0))
    processes = cores if args.device == "cpu" else 1
    seq = statistics.median(sequential_reference(args.data, cfg, args.rounds, args.device)[1:])
    floor_times, engine = compute_floor(args.data, cfg, args.rounds, processes, args.device)
    floor = statistics.median(floor_times[1:])
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{cores} cores"
    print(f"config {args.config} {cfg}, {args.rounds} rounds, {where}, "
          f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
    print(f"sequential reference  {seq:8.4f} s/round")
    print(f"compute floor         {floor:8.4f} s/round ({processes} process(es) x 1 thread; engine: {engine})")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    base = None
    for ranks in args.ranks:
        split, acc, peaks, gpu, trains_on = run_fedmpi(args.data, cfg, args.rounds, ranks, args.eval_every,
                                                       args.threads, args.device)
        base = base or split["seconds"]
        print(f"fedmpi -n {ranks:<2}          {split['seconds']:8.4f} s/round  "
              f"(bcast {split['bcast']:.4f}, reduce wait {split['reduce']:.4f}, train sum {split['train_sum']:.4f}, "
              f"eval sum {split['eval_sum']:.4f}); fedmpi/sequential {split['seconds'] / seq:.2f}, "
              f"fedmpi/floor {split['seconds'] / floor:.2f}, vs first P {split['seconds'] / base:.2f}; "
              f"accuracy {acc:.4f}; peak MB per process {[round(x) for x in peaks]}"
              + (f"; GPU MB per process {[round(x) for x in gpu]}" if gpu else "") + f"\n    {trains_on}")
        with open(args.json, "a") as f:
            f.write(json.dumps({"config": args.config, **cfg, "ranks": ranks, "rounds": args.rounds,
                                "device": args.device, "eval_every": args.eval_every, "sequential_s": seq,
                                "floor_s": floor, "fedmpi": split, "accuracy": acc, "peak_mb": peaks, "gpu_mb": gpu,
                                "date": time.strftime("%Y-%m-%d")}) + "\n")


if __name__ == "__main__":
    main()
