"""Many small clients: start-up time, round time against the compute floor, and memory, in one run.

    python benchmarks/many_clients.py --clients 100000 --ranks 3 --fraction 0.01 --rounds 8

Makes the synthetic federation if missing (`python -m data_prep --dataset synthetic`), then:
- fedmpi: `mpiexec -n P python -m fedmpi ...` with the one-hidden-layer `mlp`; the seconds from the
  launch to the line of round 0 (start-up: every rank imports torch, reads the manifest and the
  client index, stats the files) and to the line of round 1; the median round time over rounds
  2..T from metrics.jsonl; each rank's peak memory (VmHWM).
- compute floor: the same rounds' clients, placed on the workers as fedmpi places them, trained by
  fedmpi's engine in this process, one worker's share after another, 1 thread, their data already
  in memory, no communication, no evaluation; per round the slowest worker's time (the workers run
  in parallel, one per core).
Prints both and their ratio, and appends a JSON line to --json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from fedmpi.data import Federation
from fedmpi.engine import Engine, FlatModel
from fedmpi.engine.inputs import inputs_for
from fedmpi.fedavg import assign_to_workers, client_generator, plan_round
from fedmpi.models import build_model
from round_time import peak_memory_mb  # benchmarks/ is on sys.path: this script's folder

SEED, EPOCHS, BATCH, LR = 0, 1, 10, 0.05


def run_fedmpi(data: str, ranks: int, fraction: float, rounds: int):
    out = Path(tempfile.mkdtemp(prefix="fedmpi-many-")) / "run"
    cmd = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(ranks), sys.executable, "-m", "fedmpi",
           "--data", data, "--out", str(out), "--model", "mlp", "--fraction", str(fraction), "--epochs",
           str(EPOCHS), "--batch-size", str(BATCH), "--lr", str(LR), "--rounds", str(rounds), "--seed", str(SEED),
           "--checkpoint-every", "0"]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen, peaks = {}, {}

    def read():  # when the lines of rounds 0 and 1 appear
        for line in proc.stdout:
            for r in (0, 1):
                if line.startswith(f"round {r:>{len(str(rounds))}}/") and r not in seen:
                    seen[r] = time.monotonic() - started
    reader = threading.Thread(target=read)
    reader.start()
    while proc.poll() is None:
        for pid, mb in peak_memory_mb(str(out)).items():
            peaks[pid] = max(peaks.get(pid, 0.0), mb)
        time.sleep(0.05)
    reader.join()
    if proc.returncode:
        raise SystemExit(f"fedmpi failed (exit {proc.returncode})")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [r["time"] for r in records if "time" in r][1:]  # round 1 reads the clients' files first
    split = {k: statistics.median(t[k] for t in timed) for k in timed[0]}
    return seen, split, sorted(peaks.values())


def compute_floor(data: str, ranks: int, fraction: float, rounds: int) -> list[float]:
    torch.set_num_threads(1)
    fed = Federation(data)
    workers = max(ranks - 1, 1)
    m = max(int(round(fraction * fed.num_clients)), 1)
    plans = [plan_round(SEED, r, fed.num_clients, m) for r in range(1, rounds + 1)]
    flat = FlatModel(build_model("mlp", fed.input_shape, fed.num_classes, SEED), torch.device("cpu"))
    start = flat.weights.clone()
    prepare = inputs_for(fed, torch.device("cpu"), torch.float32)
    clients = {int(k): tuple(map(torch.from_numpy, fed.load_client(int(k)))) for p in plans for k in p}
    engine = Engine(flat, prepare, 0, next(iter(clients.values())))
    floor = []
    for r, sampled in enumerate(plans, start=1):
        owners = assign_to_workers(sampled, fed.sizes[sampled], workers, fed.num_clients)
        per_worker = []
        for w in range(workers):
            mine = [int(k) for k in sampled[owners == w]]
            t = time.perf_counter()
            for stack in engine.stacks([len(clients[k][1]) for k in mine], BATCH):
                engine.train(start, [clients[mine[i]] for i in stack],
                             [client_generator(SEED, r, mine[i]) for i in stack], EPOCHS, BATCH, LR)
            per_worker.append(time.perf_counter() - t)
        floor.append(max(per_worker))
    return floor


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=100_000)
    p.add_argument("--data", help="federation folder (default data/synthetic-<K>)")
    p.add_argument("--ranks", type=int, default=3)
    p.add_argument("--fraction", type=float, default=0.01)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--json", default="runs/bench/many_clients.jsonl")
    args = p.parse_args()
    data = args.data or f"data/synthetic-{args.clients}"
    if not Path(data, "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "data_prep", "--dataset", "synthetic", "--model-skew", "1",
                        "--feature-skew", "1", "--clients", str(args.clients), "--clients-per-file", "1000",
                        "--out", data], check=True)
    seen, split, peaks = run_fedmpi(data, args.ranks, args.fraction, args.rounds)
    floor = statistics.median(compute_floor(data, args.ranks, args.fraction, args.rounds)[1:])
    m = max(int(round(args.fraction * Federation(data).num_clients)), 1)
    print(f"{args.clients:,} clients, {m} a round, -n {args.ranks}, mlp E={EPOCHS} B={BATCH}, "
          f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
    print(f"start-up: round 0's line after {seen.get(0, float('nan')):.1f} s, round 1's after "
          f"{seen.get(1, float('nan')):.1f} s")
    print(f"round: {split['seconds']:.3f} s (bcast {split['bcast']:.4f}, reduce wait {split['reduce']:.3f}, "
          f"train sum {split['train_sum']:.3f}, eval sum {split['eval_sum']:.3f}); compute floor {floor:.3f} s; "
          f"round / floor {split['seconds'] / floor:.2f}")
    print(f"peak memory per rank (MB): {[round(x) for x in peaks]}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    with open(args.json, "a") as f:
        f.write(json.dumps({"clients": args.clients, "per_round": m, "ranks": args.ranks, "startup_s": seen,
                            "round": split, "floor_s": floor, "peak_mb": peaks,
                            "date": time.strftime("%Y-%m-%d")}) + "\n")


if __name__ == "__main__":
    main()
