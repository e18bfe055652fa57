"""Scaling studies: which runs a study makes, and one CSV row per finished run.

    python -m fedmpi.scaling plan strong|weak --ranks 1,2,3,5 --out DIR [--per-worker c] -- FEDMPI FLAGS
    python -m fedmpi.scaling gather DIR [RUN...] -o results.csv [--study strong|weak] [--series LABEL] [--append]

`jobs/scaling.sh` launches what `plan` prints and then calls `gather` and
`python -m fedmpi.plot scaling`. Definitions (W = worker ranks = max(P-1, 1)):

- strong scaling: fixed federation (K) and clients per round (m), P varies.
  speedup S = T(base) / T(P), efficiency = S / (W / W_base).
- weak scaling: m = c·W, so every worker trains c clients per round on
  average. efficiency = T(base) / T(P), scaled speedup = efficiency · W / W_base.

T is the median over rounds of the round's wall time at rank 0 (metrics.jsonl
`time.seconds`); the base is the run with the fewest ranks. A round's time is
split into `compute_s` (training + evaluation per worker, averaged over the
workers), `wait_s` (the rest of rank 0's wait in the reduce: the slowest
worker's excess over the average, plus the reduction itself), `bcast_s` and
`server_s` (rank 0's own work: the update, metrics, checkpoints).
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tomllib
from pathlib import Path

from fedmpi.errors import ArgumentParser, FedMPIError
from fedmpi.metrics import read_metrics

COLUMNS = ["series", "study", "model", "ranks", "workers", "clients_per_round", "rounds_timed",
           "round_s", "compute_s", "train_s", "eval_s", "wait_s", "bcast_s", "reduce_wait_s", "server_s",
           "speedup", "efficiency", "run"]


def workers(ranks: int) -> int:
    return max(ranks - 1, 1)


# ---- plan -------------------------------------------------------------------------------------
def plan(study: str, ranks: list[int], out: Path, fedmpi_flags: list[str], per_worker: int | None) -> list[tuple]:
    """[(ranks, run folder, extra fedmpi flags besides --out)] for a study; checks everything a run would refuse."""
    from fedmpi.cli import parse_args
    from fedmpi.config import FIELD_NAMES, build_config
    from fedmpi.data import Federation

    args = parse_args(fedmpi_flags)
    cfg = build_config(args.config, {k: getattr(args, k) for k in FIELD_NAMES})
    if out.exists() and any(out.iterdir()):
        raise FedMPIError(f"{out} exists; a study writes a fresh folder (remove it or choose another --out)")
    if not ranks or min(ranks) < 1:
        raise FedMPIError("--ranks: give rank counts >= 1, e.g. 1,2,3,5,9")
    if per_worker is not None and per_worker < 1:
        raise FedMPIError(f"--per-worker {per_worker}: give the clients each worker trains per round, >= 1")
    k = Federation(cfg.data).num_clients
    if max(workers(p) for p in ranks) > k:
        raise FedMPIError(f"--ranks: {max(ranks)} ranks need more than the federation's {k} clients")
    runs = []
    for p in sorted(set(ranks)):
        flags = []
        if study == "weak":
            c = per_worker or 1
            m = c * workers(p)
            if m > k:
                raise FedMPIError(f"weak scaling: {p} ranks x {c} clients per worker = {m} clients per round, "
                                  f"but the federation has {k}")
            flags += ["--fraction", repr(m / k)]
        elif per_worker:
            raise FedMPIError("--per-worker is for weak scaling; strong scaling keeps the config's fraction")
        runs.append((p, out / f"p{p:03d}", flags))
    return runs


# ---- gather -----------------------------------------------------------------------------------
def run_row(run: Path) -> dict | None:
    """Median per-round timings of one finished run, or None if it has not finished."""
    summary = run / "summary.json"
    if not summary.is_file():
        return None
    done = _read(summary, json.loads)
    ranks = done["ranks"]
    cfg = _read(run / "config.toml", tomllib.loads)
    timed = [r for r in read_metrics(run) if "time" in r]
    if not timed:
        return None
    w = done.get("workers", workers(ranks))  # ranks beyond a node's cores may be idle

    def med(f):
        return statistics.median(f(r["time"]) for r in timed)

    compute = med(lambda t: (t["train_sum"] + t["eval_sum"]) / w)
    reduce_wait = med(lambda t: t["reduce"])
    return {
        "model": cfg["model"], "ranks": ranks, "workers": w,
        "clients_per_round": statistics.median(len(r["clients"]) for r in timed),
        "rounds_timed": len(timed), "round_s": med(lambda t: t["seconds"]),
        "compute_s": compute, "train_s": med(lambda t: t["train_sum"] / w),
        "eval_s": med(lambda t: t["eval_sum"] / w),
        "wait_s": max(med(lambda t: t["reduce"] - (t["train_sum"] + t["eval_sum"]) / w * (ranks > 1)), 0.0),
        "bcast_s": med(lambda t: t["bcast"]), "reduce_wait_s": reduce_wait,
        # With P = 1 the one rank trains between the broadcast and the reduce.
        "server_s": max(med(lambda t: t["seconds"] - t["bcast"] - t["reduce"]
                            - (t["train_sum"] + t["eval_sum"] if ranks == 1 else 0.0)), 0.0),
        "run": str(run),
    }


def _read(path: Path, parse):
    """parse(the file's text); a damaged file (truncated, not UTF-8) is one line naming it."""
    try:
        return parse(path.read_text())
    except (OSError, ValueError) as e:  # JSON's, TOML's and UTF-8's errors are ValueErrors
        raise FedMPIError(f"{path}: cannot read ({e}); rerun that run, or leave it out") from None


def run_folders(paths: list[Path]) -> list[Path]:
    """Run folders as given, and those inside a study folder (one without a config.toml of its own)."""
    found = []
    for path in map(Path, paths):
        if path.is_dir() and not (path / "config.toml").exists():
            found += sorted(p for p in path.iterdir() if (p / "config.toml").is_file())
        else:
            found.append(path)
    return found


def gather(runs: list[Path], study: str | None = None, series: str | None = None) -> list[dict]:
    rows = []
    for run in run_folders(runs):
        row = run_row(Path(run))
        if row is None:
            print(f"fedmpi.scaling: {run}: no finished run (summary.json, timed rounds); left out", file=sys.stderr)
        else:
            rows.append(row)
    if not rows:
        raise FedMPIError("no finished runs to gather")
    rows.sort(key=lambda r: r["ranks"])
    ms = {r["clients_per_round"] for r in rows}
    study = study or ("strong" if len(ms) == 1 else "weak")
    base = rows[0]
    for r in rows:
        scale = r["workers"] / base["workers"]
        ratio = base["round_s"] / r["round_s"]
        r["speedup"], r["efficiency"] = (ratio, ratio / scale) if study == "strong" else (ratio * scale, ratio)
        r["study"] = study
        if series:
            r["series"] = series
        elif study == "strong":
            r["series"] = f"strong {r['model']} m={base['clients_per_round']:g}"
        else:
            r["series"] = f"weak {r['model']} {base['clients_per_round'] / base['workers']:g}/worker"
    return rows


def write_csv(rows: list[dict], path: Path, append: bool) -> None:
    new = not (append and path.exists())
    with open(path, "w" if new else "a", newline="") as f:
        out = csv.DictWriter(f, COLUMNS)
        if new:
            out.writeheader()
        for r in rows:
            out.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in COLUMNS:
            if k not in ("series", "study", "model", "run"):
                r[k] = float(r[k])
    return rows


def main(argv: list[str]) -> int:
    p = ArgumentParser(prog="python -m fedmpi.scaling", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    pl = sub.add_parser("plan", help="print one line per run: ranks<TAB>run folder<TAB>more fedmpi flags")
    pl.add_argument("study", choices=("strong", "weak"))
    pl.add_argument("--ranks", required=True, help="comma-separated rank counts, e.g. 1,2,3,5,9")
    pl.add_argument("--out", required=True, type=Path, help="study folder (run folders go in it)")
    pl.add_argument("--per-worker", type=int, help="weak scaling: clients per worker per round (default 1)")
    ga = sub.add_parser("gather", help="one CSV row per finished run")
    ga.add_argument("runs", nargs="+", type=Path, help="run folders, or study folders holding them")
    ga.add_argument("-o", "--output", required=True, type=Path)
    ga.add_argument("--study", choices=("strong", "weak"), help="default: strong if every run has the same m")
    ga.add_argument("--series", help="label of these runs in the plot")
    ga.add_argument("--append", action="store_true", help="add rows to an existing CSV (another series)")
    flags = argv[argv.index("--") + 1:] if "--" in argv else []  # plan: the training flags after --
    try:
        args = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
        if args.command == "plan":
            try:
                ranks = [int(x) for x in args.ranks.replace(",", " ").split()]
            except ValueError:
                raise FedMPIError(f"--ranks: expected comma-separated integers, got {args.ranks!r}") from None
            for ranks_, run, extra in plan(args.study, ranks, args.out, flags, args.per_worker):
                print(f"{ranks_}\t{run}\t{' '.join(extra)}")
        else:
            rows = gather(args.runs, args.study, args.series)
            try:
                write_csv(rows, args.output, args.append)
            except OSError as e:
                raise FedMPIError(f"-o {args.output}: cannot write: {e.strerror or e}; choose another -o") from None
            for r in rows:
                print(f"{r['series']}: P={r['ranks']:>3} W={r['workers']:>3} round {r['round_s']:.3f} s "
                      f"(compute {r['compute_s']:.3f}, wait {r['wait_s']:.3f}, bcast {r['bcast_s']:.4f}) "
                      f"speedup {r['speedup']:.2f} efficiency {r['efficiency']:.2f}")
            print(f"fedmpi.scaling: wrote {args.output}")
    except FedMPIError as e:
        print(f"fedmpi.scaling: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
