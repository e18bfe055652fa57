"""Seconds per round of this checkout (B) against a git ref (A), interleaved in one run on one machine.

    python benchmarks/ab.py --ref 16e5e7d --config A --pairs 2 --rounds 30
    python benchmarks/ab.py --ref main --config A B fedsgd --pairs 2

The ref is checked out into its own git worktree (removed at the end). Each side prepares its federation
with its own data_prep (the same command; the format may differ between versions, the data do not) and
trains it with its own fedmpi under `mpiexec -n RANKS`; runs alternate A, B, A, B ... so that the
machine's drift falls on both. Per run: the median seconds per round over rounds 2..T from
metrics.jsonl, and the final test accuracy. Prints a table and, per config, B's median over A's (below
1: B is faster); appends one JSON line per run to --json. The configs are benchmarks/round_time.py's.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {  # as benchmarks/round_time.py's (MNIST, 100 IID clients)
    "A": dict(model="2nn", epochs=1, batch_size=10, lr=0.1, fraction=0.1),
    "B": dict(model="cnn", epochs=5, batch_size=10, lr=0.05, fraction=0.1),
    "fedsgd": dict(model="cnn", epochs=1, batch_size=0, lr=0.1, fraction=0.1),
}


def run(cmd: list[str], code: Path, timeout: float) -> None:
    """`cmd` with `code`'s fedmpi and data_prep first on the path (a worktree's, or this checkout's)."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    done = subprocess.run(cmd, cwd=code, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        sys.exit(f"ab: {' '.join(cmd)} failed in {code} (exit {done.returncode}):\n{done.stderr[-2000:]}")


def per_round(run_dir: Path) -> tuple[float, float]:
    """(median seconds of rounds 2..T, final test accuracy) from the run's metrics.jsonl."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    seconds = [r["seconds"] for r in records if r["round"] >= 2 and "seconds" in r]
    accuracy = [r["test_accuracy"] for r in records if "test_accuracy" in r][-1]
    return statistics.median(seconds), accuracy


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ref", required=True, help="the git ref to compare with (A)")
    p.add_argument("--config", nargs="+", default=["A"], choices=CONFIGS)
    p.add_argument("--pairs", type=int, default=2, help="A, B runs per config (default 2)")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--ranks", type=int, default=3)
    p.add_argument("--json", type=Path, help="append one JSON line per run here")
    args = p.parse_args()
    python, mpiexec = sys.executable, str(Path(sys.executable).parent / "mpiexec")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory(prefix="fedmpi-ab-") as tmp:
        tmp = Path(tmp)
        worktree = tmp / "ref"
        subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.ref], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            sides = {f"A {args.ref}": worktree, f"B {head.strip()}": ROOT}
            data = {}
            for name, code in sides.items():
                data[name] = tmp / f"fed-{name[0]}"
                run([python, "-m", "data_prep", "--dataset", "mnist", "--partition", "iid", "--clients", "100",
                     "--out", str(data[name])], code, 600)
            results = []
            for config in args.config:
                flags = [f"--{k.replace('_', '-')}={v}" for k, v in CONFIGS[config].items()]
                for pair in range(args.pairs):
                    for name, code in sides.items():
                        out = tmp / f"run-{config}-{pair}-{name[0]}"
                        run([mpiexec, "-n", str(args.ranks), python, "-m", "fedmpi", "--data", str(data[name]),
                             "--out", str(out), "--rounds", str(args.rounds), "--seed", "0", *flags], code, 3600)
                        seconds, accuracy = per_round(out)
                        results.append({"config": config, "side": name, "pair": pair, "seconds": seconds,
                                        "accuracy": accuracy, "ranks": args.ranks, "rounds": args.rounds})
                        print(f"{config} pair {pair} {name}: {seconds:.4f} s a round, accuracy {accuracy:.4f}",
                              flush=True)
                        if args.json:
                            with open(args.json, "a") as f:
                                f.write(json.dumps(results[-1]) + "\n")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, capture_output=True)
    for config in args.config:
        median = {name: statistics.median(r["seconds"] for r in results if r["config"] == config and r["side"] == name)
                  for name in sides}
        a, b = median.values()
        print(f"{config}: A {a:.4f} s, B {b:.4f} s a round (medians of {args.pairs}); B / A = {b / a:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
