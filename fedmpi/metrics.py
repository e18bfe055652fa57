"""Run records: one JSON line per round in metrics.jsonl, one console line, summary.json."""
from __future__ import annotations

import json
import os
from pathlib import Path


class MetricsLog:
    """metrics.jsonl, started over with the records a resumed run keeps (rewritten atomically)."""

    def __init__(self, run_dir: Path, total_rounds: int, kept: list[dict]):
        self.path = run_dir / "metrics.jsonl"
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)
        self.file = open(self.path, "a")
        self.total_rounds = total_rounds

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        print(console_line(record, self.total_rounds), flush=True)

    def close(self) -> None:
        self.file.close()


def console_line(r: dict, total_rounds: int) -> str:
    width = len(str(total_rounds))
    parts = [f"round {r['round']:>{width}}/{total_rounds}"]
    if "clients" in r:
        parts.append(f"clients {len(r['clients']):>3}")
    if "train_loss" in r:
        parts.append(f"train loss {r['train_loss']:.4f}")
    if "test_accuracy" in r:
        parts.append(f"test acc {100 * r['test_accuracy']:6.2f}%")
    if r.get("skipped_clients"):
        parts.append(f"skipped {r['skipped_clients']}")
    if "seconds" in r:
        parts.append(f"{r['seconds']:.2f} s")
    return " | ".join(parts)


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines[:-1]]
    try:
        records += [json.loads(line) for line in lines[-1:]]
    except json.JSONDecodeError:
        pass  # a line torn by a kill mid-write; that round is redone on resume
    return records


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
