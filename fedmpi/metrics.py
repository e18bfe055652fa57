"""Run records: one JSON line per round in metrics.jsonl, one console line, summary.json."""
from __future__ import annotations

import json
from pathlib import Path


class MetricsLog:
    def __init__(self, run_dir: Path, total_rounds: int, append: bool = False):
        self.path = run_dir / "metrics.jsonl"
        self.file = open(self.path, "a" if append else "w")
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
    with open(Path(run_dir) / "metrics.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
