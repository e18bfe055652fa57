"""Client updates per second: asynchronous FedBuff against synchronous FedAvg, interleaved in one run.

    python benchmarks/async_throughput.py --pairs 2 --rounds 30

Both train the 2NN (E = 1, B = 10, η = 0.1) on MNIST, 100 clients of unequal sizes (data_prep
--unbalance 1), lognormal speeds, under `mpiexec -n RANKS`: FedAvg with m = BUFFER clients a round,
and FedBuff with `--concurrency CONCURRENCY --buffer-size BUFFER`, so each MPI step trains m client
updates either way; runs alternate sync, async, ... Per run, over rounds 2..T of metrics.jsonl: client
updates per second of wall time (Σ clients / Σ seconds) and training examples per second (Σ n_k / Σ
seconds: FedBuff's buffers hold more of the small, quick clients than uniform sampling does, so
updates alone flatter it). An examples ratio near 1 says asynchronous mode keeps the workers as busy
as synchronous rounds do (not one client per MPI round trip).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from fedmpi.data import Federation  # noqa: E402 (this checkout's, as the runs use)
COMMON = ["--model", "2nn", "--epochs", "1", "--batch-size", "10", "--lr", "0.1", "--seed", "0",
          "--client-speed", "lognormal", "--threads", "1", "--eval-every", "1000"]


def throughput(run_dir: Path, sizes) -> tuple[float, float]:
    """(client updates, training examples) per second of wall time over rounds 2..T."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    late = [r for r in records if r["round"] >= 2 and "seconds" in r]
    seconds = sum(r["seconds"] for r in late)
    return (sum(len(r["clients"]) for r in late) / seconds,
            sum(int(sizes[k]) for r in late for k in r["clients"]) / seconds)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--ranks", type=int, default=3)
    p.add_argument("--buffer", type=int, default=10)
    p.add_argument("--concurrency", type=int, default=20)
    args = p.parse_args()
    python, mpiexec = sys.executable, str(Path(sys.executable).parent / "mpiexec")
    modes = {"sync": ["--fraction", str(args.buffer / 100)],
             "async": ["--execution", "async", "--concurrency", str(args.concurrency), "--buffer-size",
                       str(args.buffer)]}
    with tempfile.TemporaryDirectory(prefix="fedmpi-async-") as tmp:
        fed = Path(tmp) / "fed"
        subprocess.run([python, "-m", "data_prep", "--dataset", "mnist", "--partition", "iid", "--unbalance", "1",
                        "--clients", "100", "--out", str(fed)], cwd=ROOT, check=True, capture_output=True)
        sizes = Federation(fed).sizes
        rates: dict[str, list[tuple[float, float]]] = {mode: [] for mode in modes}
        for pair in range(args.pairs):
            for mode, flags in modes.items():
                out = Path(tmp) / f"{mode}-{pair}"
                subprocess.run([mpiexec, "-n", str(args.ranks), python, "-m", "fedmpi", "--data", str(fed),
                                "--out", str(out), "--rounds", str(args.rounds), *COMMON, *flags],
                               cwd=ROOT, check=True, capture_output=True, timeout=3600)
                rates[mode].append(throughput(out, sizes))
                print(f"pair {pair} {mode}: {rates[mode][-1][0]:.1f} client updates/s, "
                      f"{rates[mode][-1][1]:,.0f} examples/s", flush=True)
    for i, what in enumerate(("client updates/s", "examples/s")):
        sync, asynchronous = (statistics.median(r[i] for r in rates[mode]) for mode in modes)
        print(f"medians of {args.pairs}: sync {sync:,.1f}, async {asynchronous:,.1f} {what}; "
              f"async / sync = {asynchronous / sync:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
