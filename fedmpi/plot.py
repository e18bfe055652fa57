"""Plots from run folders and scaling CSVs (matplotlib, no display needed).

    python -m fedmpi.plot runs/a runs/b -o accuracy.png [--target 0.99] [--x virtual_time]   # test accuracy
    python -m fedmpi.plot table runs/sweep/* [--target 0.99] [--best-lr] [-o table.md]
    python -m fedmpi.plot scaling results.csv [more.csv] -o scaling.png [--cores N]
    python -m fedmpi.plot clients runs/a [runs/b] -o clients.png [--round R]   # per-client accuracy

The scaling figure has three panels: speedup and parallel efficiency against
ranks (one line per series of `python -m fedmpi.scaling gather`), and
the split of the median round time of each run of the first series. The
clients figure (federated evaluation, eval_clients) has two panels: the
distribution of the clients' accuracies in one round (an ECDF: the share of
clients at or below each accuracy; default the last evaluated round), and
their 10th, 50th and 90th percentiles over the rounds.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedmpi.errors import ArgumentParser, FedMPIError
from fedmpi.evaluation import FILE as CLIENT_FILE, read_client_accuracy
from fedmpi.metrics import read_metrics
from fedmpi.results import best_lr, markdown, optimizer, run_config, run_result
from fedmpi.scaling import read_csv

PARTS = [("compute_s", "compute (per worker)"), ("wait_s", "wait: slowest worker + reduce"),
         ("bcast_s", "broadcast"), ("server_s", "server update, logging")]


def accuracy_curve(run: Path, x: str = "round") -> list[tuple[float, float]]:
    """(round or virtual_time, test accuracy in %) of each evaluated round; round 0 is at virtual time 0."""
    points = []
    for r in read_metrics(run):
        if "test_accuracy" not in r:
            continue
        if x == "virtual_time" and r["round"] and "virtual_time" not in r:
            raise FedMPIError(f"{run}: round {r['round']} has no virtual_time (a run from before the simulated clock)")
        points.append((r["round"] if x == "round" else r.get("virtual_time", 0.0), 100 * r["test_accuracy"]))
    if not points:
        raise FedMPIError(f"{run}: no evaluated rounds in metrics.jsonl")
    return points


def plot_accuracy(runs: list[Path], out: Path, title: str | None = None, target: float | None = None,
                  log_x: bool = False, x: str = "round") -> None:
    runs = [run for run in runs if (Path(run) / "config.toml").is_file()]  # a sweep's plan/ is no run
    if not runs:
        raise FedMPIError("no run folders among the arguments")
    fig, ax = _pyplot().subplots(figsize=(6.4, 4.2))
    lowest = 100.0
    one_parent = len({Path(run).resolve().parent for run in runs}) == 1
    for run in runs:
        points = accuracy_curve(run, x)
        label = Path(run).name if one_parent else f"{Path(run).resolve().parent.name}/{Path(run).name}"
        ax.plot(*zip(*points), marker="." if len(points) < 40 else None, label=label)
        lowest = min(lowest, points[min(len(points) - 1, 1)][1])
    if target:
        ax.axhline(100 * target, color="k", ls="--", lw=1, label=f"target {100 * target:g} %")
        # The curves' approach to the target is what matters: start the axis near round 1's accuracy.
        ax.set_ylim(max(0.0, min(lowest, 100 * target - 2)), min(100.0, 100 * target + 1.5))
    if log_x:
        ax.set_xscale("symlog", linthresh=1)  # round 0 stays on the axis
        ax.set_xlim(left=0)
    ax.set_xlabel("communication round" if x == "round" else "virtual time (s, the simulated clock)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7 if len(runs) > 6 else None)
    names = {optimizer(run_config(run)) for run in runs}
    ax.set_title(title or f"{names.pop() if len(names) == 1 else 'Federated'} test accuracy")
    _save(fig, out)


def plot_clients(runs: list[Path], out: Path, round_: int | None = None, title: str | None = None) -> None:
    """The per-client accuracy of federated evaluation: its ECDF in one round, and p10/p50/p90 over rounds."""
    runs = [run for run in runs if (Path(run) / "config.toml").is_file()]  # a sweep's plan/ is no run
    if not runs:
        raise FedMPIError("no run folders among the arguments")
    fig, (ax_d, ax_r) = _pyplot().subplots(1, 2, figsize=(11, 4.2))
    one_parent = len({Path(run).resolve().parent for run in runs}) == 1
    shown = set()
    for run in runs:
        lines = [r for r in read_client_accuracy(run) if r["clients"]]
        if not lines:
            raise FedMPIError(f"{run}: no per-client accuracies in {CLIENT_FILE} (run with --eval-clients C on a "
                              "federation made with data_prep --client-test-fraction F)")
        line = lines[-1] if round_ is None else next((r for r in lines if r["round"] == round_), None)
        if line is None:
            raise FedMPIError(f"{run}: round {round_} was not evaluated on clients (rounds "
                              f"{', '.join(str(r['round']) for r in lines)})")
        shown.add(line["round"])
        label = Path(run).name if one_parent else f"{Path(run).resolve().parent.name}/{Path(run).name}"
        accuracy = sorted(100 * a for a in line["accuracy"])
        n = len(accuracy)
        ax_d.step([0.0, *accuracy, 100.0], [0.0, *[(i + 1) / n for i in range(n)], 1.0], where="post",
                  label=f"{label} (round {line['round']}, {n} clients)")
        rounds = [(r["round"], r["client_accuracy"]) for r in read_metrics(run)
                  if r.get("client_accuracy", {}).get("clients")]
        x = [t for t, _ in rounds]
        drawn = ax_r.plot(x, [100 * c["p50"] for _, c in rounds], marker="." if len(x) < 40 else None,
                          label=f"{label}: median, p10–p90")
        ax_r.fill_between(x, [100 * c["p10"] for _, c in rounds], [100 * c["p90"] for _, c in rounds],
                          color=drawn[0].get_color(), alpha=0.2)
    ax_d.set_xlabel("a client's test accuracy (%)")
    ax_d.set_ylabel("share of clients at or below it")
    ax_d.set_xlim(0, 100)
    ax_d.set_ylim(0, 1.02)
    ax_d.set_title(f"per-client accuracy, round {shown.pop()}" if len(shown) == 1 else "per-client accuracy",
                   fontsize=10)
    ax_r.set_xlabel("communication round")
    ax_r.set_ylabel("clients' test accuracy (%)")
    ax_r.xaxis.get_major_locator().set_params(integer=True)
    for ax in (ax_d, ax_r):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7 if len(runs) > 3 else 8)
    fig.suptitle(title or "Federated evaluation: each client's accuracy on its own test set")
    _save(fig, out)


def plot_scaling(csvs: list[Path], out: Path, cores: int | None = None, title: str | None = None) -> None:
    rows = [r for path in csvs for r in read_csv(path)]
    if not rows:
        raise FedMPIError(f"{', '.join(map(str, csvs))}: no rows")
    series = list(dict.fromkeys(r["series"] for r in rows))
    fig, (ax_s, ax_e, ax_t) = _pyplot().subplots(1, 3, figsize=(15, 4.4))
    for name in series:
        sr = sorted((r for r in rows if r["series"] == name), key=lambda r: r["ranks"])
        p = [r["ranks"] for r in sr]
        ax_s.plot(p, [r["speedup"] for r in sr], marker="o", label=name)
        ax_e.plot(p, [r["efficiency"] for r in sr], marker="o", label=name)
    p = sorted({r["ranks"] for r in rows})
    base = min(rows, key=lambda r: r["ranks"])["workers"]
    ax_s.plot(p, [max(x - 1, 1) / base for x in p], "k:", lw=1, label="ideal (W / W_base)")
    for ax in (ax_s, ax_e):
        if cores:
            ax.axvline(cores + 1, color="grey", ls="--", lw=1, label=f"{cores} cores = {cores} workers")
        ax.set_xlabel("MPI ranks P (W = P - 1 workers; P = 1: one process)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    ax_s.set_ylabel("speedup (weak: scaled speedup)")
    ax_e.set_ylabel("parallel efficiency")
    ax_e.set_ylim(0, max(1.1, max(r["efficiency"] for r in rows) * 1.05))
    ax_s.legend(fontsize=8)
    ax_e.legend(fontsize=8)
    first = sorted((r for r in rows if r["series"] == series[0]), key=lambda r: r["ranks"])
    labels = [f"P={r['ranks']:g}" for r in first]
    bottom = [0.0] * len(first)
    for key, label in PARTS:
        values = [r[key] for r in first]
        ax_t.bar(labels, values, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax_t.set_ylabel("median seconds per round")
    ax_t.set_title(f"round time split: {series[0]}", fontsize=10)
    ax_t.legend(fontsize=8)
    fig.suptitle(title or "FedAvg scaling (median round time)")
    _save(fig, out)


def _pyplot():
    """matplotlib's pyplot, drawing into files (no display); a one-line error naming the extra if it is
    not installed (tables need none)."""
    try:
        import matplotlib
    except ImportError:
        raise FedMPIError("plots need matplotlib: pip install 'fedmpi[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path) -> None:
    fig.tight_layout()
    try:
        _write(out, lambda path: fig.savefig(path, dpi=110))
    finally:
        _pyplot().close(fig)


def _write(out: Path, write) -> None:
    """write(out); an OSError (a missing folder, no permission, a full disk) is one line naming the file."""
    try:
        write(out)
    except OSError as e:
        raise FedMPIError(f"-o {out}: cannot write: {e.strerror or e}; choose another -o") from None
    print(f"fedmpi.plot: wrote {out}")


def accuracy(text: str) -> float:
    """--target: a test accuracy as a fraction, 0 < a <= 1."""
    value = float(text)
    if not 0 < value <= 1:  # nan and inf too
        raise argparse.ArgumentTypeError(f"the target accuracy must lie in (0, 1], e.g. 0.99; got {text}")
    return value


def table_main(argv: list[str]) -> int:
    p = ArgumentParser(prog="python -m fedmpi.plot table",
                       description="rounds to the target accuracy of run folders, as a Markdown table")
    p.add_argument("runs", nargs="+", type=Path, help="run folders (folders without config.toml are skipped)")
    p.add_argument("--target", type=accuracy, help="target test accuracy, e.g. 0.99 (default: each run's own)")
    p.add_argument("--best-lr", action="store_true",
                   help="one row per setting and seed: the learning rate that reached the target first")
    p.add_argument("-o", "--output", type=Path, help="write the table here (default: print it)")
    try:
        args = p.parse_args(argv)
        rows = []
        for run in (run for run in args.runs if (run / "config.toml").exists()):
            row = run_result(run, args.target)
            if row is None:
                print(f"fedmpi.plot: {run}: no evaluated round yet; left out", file=sys.stderr)
            else:
                rows.append(row)
        if not rows:
            raise FedMPIError("no run folders among the arguments")
        text = markdown(best_lr(rows) if args.best_lr else rows)
        if args.output:
            _write(args.output, lambda path: path.write_text(text))
        else:
            print(text, end="")
    except (FedMPIError, OSError, KeyError, ValueError) as e:
        print(f"fedmpi.plot: error: {e}", file=sys.stderr)
        return 2
    return 0


def clients_main(argv: list[str]) -> int:
    p = ArgumentParser(prog="python -m fedmpi.plot clients",
                       description="the distribution of the clients' accuracies on their own test sets (runs with "
                                   "eval_clients > 0): an ECDF in one round and p10/p50/p90 over the rounds")
    p.add_argument("runs", nargs="+", type=Path, help="run folders (folders without config.toml are skipped)")
    p.add_argument("-o", "--output", required=True, type=Path, help="image file (.png, .pdf, .svg)")
    p.add_argument("--round", type=int, dest="round_", help="the round whose distribution is drawn (default: the "
                   "last evaluated one)")
    p.add_argument("--title")
    try:
        args = p.parse_args(argv)
        plot_clients(args.runs, args.output, args.round_, args.title)
    except (FedMPIError, OSError, KeyError, ValueError) as e:
        print(f"fedmpi.plot: error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["table"]:
        return table_main(argv[1:])
    if argv[:1] == ["clients"]:
        return clients_main(argv[1:])
    scaling = argv[:1] == ["scaling"]
    p = ArgumentParser(
        prog="python -m fedmpi.plot" + (" scaling" if scaling else ""),
        description="scaling plot from CSVs of python -m fedmpi.scaling gather" if scaling else
        "test accuracy vs round of run folders (python -m fedmpi.plot scaling CSV... for scaling plots; "
        "python -m fedmpi.plot table RUN... [--best-lr] for rounds-to-target tables; python -m fedmpi.plot "
        "clients RUN... for the distribution of per-client accuracy)")
    p.add_argument("inputs", nargs="+", type=Path, help="CSV files" if scaling else "run folders")
    p.add_argument("-o", "--output", required=True, type=Path, help="image file (.png, .pdf, .svg)")
    p.add_argument("--title")
    if scaling:
        p.add_argument("--cores", type=int, help="mark the machine's core count")
    else:
        p.add_argument("--target", type=accuracy, help="draw the target accuracy, e.g. 0.99, and zoom to it")
        p.add_argument("--log-x", action="store_true", help="logarithmic x axis (runs of very different length)")
        p.add_argument("--x", choices=("round", "virtual_time"), default="round",
                       help="x axis: the round (default), or virtual_time on the simulated clock (heterogeneous or "
                       "asynchronous clients: README)")
    try:
        args = p.parse_args(argv[1:] if scaling else argv)
        if scaling:
            plot_scaling(args.inputs, args.output, args.cores, args.title)
        else:
            plot_accuracy(args.inputs, args.output, args.title, args.target, args.log_x, args.x)
    except FedMPIError as e:
        print(f"fedmpi.plot: error: {e}", file=sys.stderr)
        return 2
    except (OSError, KeyError, ValueError) as e:
        print(f"fedmpi.plot: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
