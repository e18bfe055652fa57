"""Plots and tables of docs/results.md "Heterogeneous and asynchronous clients" (#29 item 5).

    python docs/results/heterogeneity.py RUNS [--out docs/results]

RUNS is the folder docs/results/heterogeneity_runs.sh wrote: synth_s{F}_{alg}/, mnist_s{F}_{alg}/ (the
FedProx paper's Figure 1), time_*/ (virtual time to 95 % on MNIST) and shake_*/ (to 40 % on Shakespeare).
Reads each run's metrics.jsonl only; draws heterogeneity_synthetic.png, heterogeneity_mnist.png,
async_time.png (async_time_seed1.png from time_*_seed1/) and async_time_shakespeare.png, and prints the
tables (the "final" columns: the last round each run has, up to the rounds every complete run of its
figure has).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

SHARES = ("0", "0.5", "0.9")
ALGS = (("fedavg", "FedAvg (drops stragglers)", "C0"), ("fedprox0", "FedProx μ = 0", "C1"),
        ("fedprox1", "FedProx μ = 1", "C2"))
ASYNC_RUNS = (("fedbuff_c20_k10", "FedBuff, concurrency 20, buffer 10"),
              ("fedbuff_c20_k5", "FedBuff, concurrency 20, buffer 5"),
              ("fedbuff_c10_k5", "FedBuff, concurrency 10, buffer 5"),
              ("fedasync_c10", "FedAsync (buffer 1), concurrency 10"))
# virtual time to a target: run prefix -> (target, y range, plot title, the runs after the prefix and "_")
TIME_TO_TARGET = {
    "time": (0.95, (0.5, 1.0), "2NN, pathological non-IID MNIST, E = 1, B = 10, lognormal speeds σ = 1",
             (("sync", "sync FedAvg (waits for all)"), ("deadline8", "sync FedAvg, deadline 8 s")) + ASYNC_RUNS),
    "shake": (0.40, (0.1, 0.5), "LSTM, Shakespeare by role, E = 1, B = 10, lognormal speeds σ = 1, step 0.2 s",
              (("sync", "sync FedAvg (waits for all)"), ("deadline10", "sync FedAvg, deadline 10 s")) + ASYNC_RUNS),
}


def records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def series(recs, key):
    pts = [(r["round"], r.get(key)) for r in recs if r.get(key) is not None]
    return np.array([p[0] for p in pts]), np.array([p[1] for p in pts], dtype=float)


def figure1(runs: Path, prefix: str, title: str, out: Path) -> list[str]:
    rows = [("train_loss", "train loss (clients' local, kept clients)"), ("test_loss", "test loss (global model)"),
            ("test_accuracy", "test accuracy")]
    fig, axes = plt.subplots(len(rows), len(SHARES), figsize=(13, 9.5), sharex=True, squeeze=False)
    table = ["| stragglers | algorithm | rounds | final test acc. | mean of last 10 | std of last 10 | "
             "best (round) | final test loss | rounds with a higher test loss than the round before |",
             "|---|---|---|---|---|---|---|---|---|"]
    done = [records(r) for r in runs.glob(f"{prefix}_s*_*") if (r / "summary.json").exists()]
    cap = min((recs[-1]["round"] for recs in done if recs), default=None)  # the rounds all complete runs have
    for j, share in enumerate(SHARES):
        for alg, label, color in ALGS:
            run = runs / f"{prefix}_s{share}_{alg}"
            recs = [r for r in records(run) if cap is None or r["round"] <= cap]
            if not recs and alg == "fedprox0" and share == "0":
                recs = [r for r in records(runs / f"{prefix}_s0_fedavg") if cap is None or r["round"] <= cap]
                label = "FedProx μ = 0 (= FedAvg at 0 %)"
                style = ":"
            else:
                style = "-"
            if not recs:
                continue
            for i, (key, _) in enumerate(rows):
                x, y = series(recs, key)
                axes[i][j].plot(x, y, style, color=color, label=label, lw=1.4)
            x, acc = series(recs, "test_accuracy")
            _, loss = series(recs, "test_loss")
            last = acc[-10:]
            best = int(np.argmax(acc))
            ups = int(np.sum(np.diff(loss[1:]) > 0))  # from round 1 on
            table.append(f"| {float(share):.0%} | {label} | {int(x[-1])} | {acc[-1]:.2%} | {last.mean():.2%} | "
                         f"{last.std():.2%} | {acc[best]:.2%} ({int(x[best])}) | {loss[-1]:.3f} | {ups} |")
        axes[0][j].set_title(f"{float(share):.0%} stragglers")
        axes[-1][j].set_xlabel("round")
    for i, (_, name) in enumerate(rows):
        axes[i][0].set_ylabel(name)
    for ax in axes[:2].ravel():
        ax.set_yscale("log")
    for ax in axes.ravel():
        ax.grid(alpha=0.3)
    axes[-1][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return table


def time_to_target(runs: Path, prefix: str, out: Path, suffix: str = "") -> list[str]:
    target, ylim, title, names = TIME_TO_TARGET[prefix]
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(16, 4.8))
    table = [f"| execution | virtual s to {target:.0%} | server updates (rounds) | client updates aggregated | "
             "clients started | final acc. (round) | sync ÷ this (virtual s) |", "|---|---|---|---|---|---|---|"]
    found = {}
    for name, label in names:
        name = f"{prefix}_{name}{suffix}"
        recs = records(runs / name)
        if not recs:
            continue
        hit = next((r for r in recs if r.get("test_accuracy") is not None and r["round"] > 0
                    and r["test_accuracy"] >= target), None)
        upto = [r for r in recs if r["round"] > 0 and (hit is None or r["round"] <= hit["round"])]
        aggregated = sum(len(r["clients"]) - len(r.get("dropped_clients", [])) for r in upto)
        started = sum(len(r["clients"]) for r in upto)
        config = (runs / name / "config.toml").read_text()
        if 'execution = "async"' in config:  # clients still training when the target was hit also started
            started += int(next(line.split("=")[1] for line in config.splitlines()
                                if line.startswith("concurrency")))
        found[name] = hit["virtual_time"] if hit else None
        cum = np.cumsum([0] + [len(r["clients"]) - len(r.get("dropped_clients", [])) for r in recs[1:]])
        ev = [i for i, r in enumerate(recs) if r.get("test_accuracy") is not None]  # evaluated rounds
        acc = [recs[i]["test_accuracy"] for i in ev]
        a1.plot([recs[i].get("virtual_time") or 0.0 for i in ev], acc, label=label, lw=1.2)
        a2.plot(cum[ev], acc, label=label, lw=1.2)
        a3.plot([max(recs[i]["round"], 1) for i in ev], acc, label=label, lw=1.2)
        last = recs[-1] if recs[-1].get("test_accuracy") is not None else recs[ev[-1]]
        row = (f"| {label} | {hit['virtual_time']:.0f} | {hit['round']} | {aggregated} | {started} |" if hit else
               f"| {label} | not in {last['virtual_time']:.0f} | not in {last['round']} | > {aggregated} | "
               f"> {started} |")
        table.append(row + f" {last['test_accuracy']:.2%} ({last['round']}) | {{{name}}} |")
    sync = found.get(f"{prefix}_sync{suffix}")
    table = [line.format(**{k: (f"{sync / v:.2f}×" if sync and v else "–") for k, v in found.items()})
             for line in table]
    for ax, xl in ((a1, "virtual seconds"), (a2, "client updates aggregated"), (a3, "server updates (rounds)")):
        ax.axhline(target, color="grey", ls="--", lw=0.8)
        ax.set_xlabel(xl)
        ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
    a3.set_xscale("log")
    a1.set_ylabel("test accuracy")
    a1.legend(fontsize=7, loc="lower right")
    seed = suffix.replace("_seed", "") or "0"
    fig.suptitle(f"{title}, seed {seed} (target {target:.0%})")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    for prefix, title, name in (
            ("synth", "Synthetic(1,1), 30 clients, 10 a round, E = 20, B = 10, η = 0.01, model mlp", "synthetic"),
            ("mnist", "Pathological non-IID MNIST, 2NN, 10 of 100 clients a round, E = 20, B = 50, η = 0.05",
             "mnist")):
        if any(a.runs.glob(f"{prefix}_s*")):
            print(f"#### {name}\n" + "\n".join(figure1(a.runs, prefix, title, a.out / f"heterogeneity_{name}.png")))
    for prefix, suffix, png in (("time", "", "async_time"), ("time", "_seed1", "async_time_seed1"),  # SEED=1 ...
                                ("shake", "", "async_time_shakespeare")):
        if (a.runs / f"{prefix}_sync{suffix}" / "metrics.jsonl").exists():
            print(f"#### {prefix} to target{suffix.replace('_', ', ')}\n" + "\n".join(
                time_to_target(a.runs, prefix, a.out / f"{png}.png", suffix)))


if __name__ == "__main__":
    main()
