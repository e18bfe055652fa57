"""Rounds to a target accuracy, per run and per setting, as a Markdown table.

A setting is a run's configuration without its learning rate and seed; with
`best_lr`, the table keeps per setting and seed the learning rate that
reached the target in the fewest rounds (the paper picks η per row so), and
lists the grid that was tried.
"""
from __future__ import annotations

from pathlib import Path

from fedmpi.config import read_toml
from fedmpi.errors import FedMPIError
from fedmpi.metrics import read_metrics

SETTING = ("data", "model", "fraction", "epochs", "batch_size")


def run_result(run: Path, target: float | None = None) -> dict | None:
    """The run's setting, its first round at or above the target, best accuracy and time;
    None for a run that has not evaluated a round yet (just started)."""
    if not (run / "config.toml").is_file():
        raise FedMPIError(f"{run}: not a run folder (no config.toml)")
    cfg = read_toml(str(run / "config.toml"))
    target = target if target is not None else cfg.get("target_accuracy") or None
    if target is None:
        raise FedMPIError(f"{run}: no target accuracy (the run has none; pass --target)")
    records = read_metrics(run)
    evaluated = [r for r in records if "test_accuracy" in r]
    if not evaluated:
        return None
    hit = next((r["round"] for r in evaluated if r["test_accuracy"] >= target), None)
    return {**{k: cfg[k] for k in (*SETTING, "lr", "seed")}, "run": str(run), "target": target,
            "rounds_to_target": hit, "best_accuracy": max(r["test_accuracy"] for r in evaluated),
            "rounds_run": records[-1]["round"], "train_seconds": sum(r.get("seconds", 0.0) for r in records)}


def best_lr(results: list[dict]) -> list[dict]:
    """Per setting and seed, the run that reached the target first (else the most accurate)."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault(tuple(r[k] for k in (*SETTING, "seed")), []).append(r)
    best = []
    for runs in groups.values():
        win = min(runs, key=lambda r: (r["rounds_to_target"] is None, r["rounds_to_target"] or 0,
                                       -r["best_accuracy"]))
        best.append({**win, "lr_grid": sorted(r["lr"] for r in runs)})
    return best


def markdown(results: list[dict]) -> str:
    grid = any("lr_grid" in r for r in results)
    head = ["data", "model", "C", "E", "B", "η", *(["η grid"] if grid else []), "seed", "target",
            "rounds to target", "best acc.", "rounds run", "train time"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        reached = r["rounds_to_target"] if r["rounds_to_target"] is not None else f"not in {r['rounds_run']}"
        cells = [Path(r["data"]).name, r["model"], f"{r['fraction']:g}", r["epochs"],
                 r["batch_size"] or "∞", f"{r['lr']:g}",
                 *([", ".join(f"{x:g}" for x in r["lr_grid"])] if grid else []), r["seed"],
                 f"{100 * r['target']:g} %", reached, f"{100 * r['best_accuracy']:.2f} %", r["rounds_run"],
                 _duration(r["train_seconds"])]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
