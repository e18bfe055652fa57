"""Rounds to a target accuracy (or, without one, the best accuracy), per run and per setting, as a
Markdown table.

A setting is a run's configuration without its tuned values (the client's
η, the server's η, FedProx's μ) and seed; with `best_lr`, the table keeps
per setting and seed the run that reached the target in the fewest rounds
(the paper picks η per row so), and lists the grid that was tried. Runs of
other optimizers than FedAvg get a column naming theirs.
"""
from __future__ import annotations

import json
from pathlib import Path

from dataclasses import asdict

from fedmpi import algorithms
from fedmpi.config import SETTING, TUNED, RunConfig, read_toml
from fedmpi.errors import FedMPIError
from fedmpi.metrics import read_metrics

OPTIMIZER = {"sgd": "", "momentum": "FedAvgM", "adam": "FedAdam", "yogi": "FedYogi", "adagrad": "FedAdagrad"}


def run_result(run: Path, target: float | None = None) -> dict | None:
    """The run's setting, its first round at or above the target, best accuracy, time and the round
    it diverged in (summary.json); None for a run that has not evaluated a round yet (just started)."""
    if not (run / "config.toml").is_file():
        raise FedMPIError(f"{run}: not a run folder (no config.toml)")
    cfg = run_config(run)
    target = target if target is not None else cfg.get("target_accuracy") or None  # None: best accuracy only
    records = read_metrics(run)
    evaluated = [r for r in records if "test_accuracy" in r]
    if not evaluated:
        return None
    hit = next((r["round"] for r in evaluated if r["test_accuracy"] >= target), None) if target else None
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    return {**{k: cfg[k] for k in (*SETTING, *TUNED, "seed")}, "run": str(run), "target": target,
            "rounds_to_target": hit, "best_accuracy": max(r["test_accuracy"] for r in evaluated),
            "rounds_run": records[-1]["round"], "train_seconds": sum(r.get("seconds", 0.0) for r in records),
            "diverged": (summary.get("diverged") or {}).get("round")}


def run_config(run: Path) -> dict:
    """A run's config.toml, with the defaults of fields added since it was written."""
    return {**asdict(RunConfig()), **read_toml(str(Path(run) / "config.toml"))}


def best_lr(results: list[dict]) -> list[dict]:
    """Per setting and seed, the run that reached the target first (else the most accurate)."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault(json.dumps([r[k] for k in (*SETTING, "seed")], sort_keys=True), []).append(r)
    best = []
    for runs in groups.values():
        win = min(runs, key=lambda r: (r["rounds_to_target"] is None, r["rounds_to_target"] or 0,
                                       -r["best_accuracy"]))
        best.append({**win, "grid": {k: sorted({r[k] for r in runs}) for k in TUNED}})
    return best


def optimizer(r: dict) -> str:
    """FedAvg, FedAdam, FedProx + FedAvgM, ..., DP-FedAvg (z = 1) ..."""
    name = " + ".join(filter(None, [algorithms.title(r["algorithm"]) if r["algorithm"] != "fedavg" or
                                    r["server_optimizer"] == "sgd" else "", OPTIMIZER[r["server_optimizer"]]]))
    return f"DP-{name} (z = {r['dp_noise_multiplier']:g})" if r["dp_noise_multiplier"] else name


def tuned(r: dict) -> str:
    """The tuned values that vary in the run's group, each with its grid: η 0.1 (0.05, 0.1); ..."""
    return "; ".join(f"{TUNED[k]} {r[k]:g} ({', '.join(f'{x:g}' for x in grid)})"
                     for k, grid in r["grid"].items() if len(grid) > 1) or "(one run)"


def markdown(results: list[dict]) -> str:
    grid = any("grid" in r for r in results)
    optimizers = any(optimizer(r) != "FedAvg" for r in results)
    head = ["data", "model", *(["optimizer"] if optimizers else []), "C", "E", "B", "η",
            *(["tuned (grid)" if optimizers else "η grid"] if grid else []), "seed", "target",
            "rounds to target", "best acc.", "rounds run", "train time"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        reached = (r["rounds_to_target"] if r["rounds_to_target"] is not None else
                   f"diverged in round {r['diverged']}" if r["diverged"] else
                   f"not in {r['rounds_run']}" if r["target"] else "–")
        grid_cell = (tuned(r) if optimizers else ", ".join(f"{x:g}" for x in r["grid"]["lr"])) if grid else None
        cells = [Path(r["data"]).name, r["model"], *([optimizer(r)] if optimizers else []), f"{r['fraction']:g}",
                 r["epochs"], r["batch_size"] or "∞", f"{r['lr']:g}", *([grid_cell] if grid else []), r["seed"],
                 f"{100 * r['target']:g} %" if r["target"] else "–", reached, f"{100 * r['best_accuracy']:.2f} %",
                 r["rounds_run"], _duration(r["train_seconds"])]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
