"""Run records: one JSON line per round in metrics.jsonl, one console line, summary.json.

metrics.jsonl and client_accuracy.jsonl (fedmpi.evaluation) are JSON-lines files of round records with the
same life: a job starts the file over with the records a resumed run keeps (those before its checkpoint,
rewritten atomically), appends a line per round, and makes them durable before each checkpoint, so a
resumed run never leaves a round twice or a round missing."""
from __future__ import annotations

import json
import os
from pathlib import Path

from fedmpi.errors import FedMPIError
from fedmpi.files import cannot_write, write_atomically


class JsonLines:
    """A JSON-lines file of round records, started over with the records a resumed run keeps (rewritten
    atomically), then appended to."""

    def __init__(self, path: Path, kept: list[dict]):
        self.path = path
        write_atomically(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())
        self.file = open(self.path, "a")

    def append(self, record: dict) -> None:
        try:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        except OSError as e:
            raise cannot_write(self.path, e) from None

    def sync(self) -> None:
        """Make the records written so far durable: called before each checkpoint, so that a crash can
        never leave a checkpoint that is ahead of the records (a resume keeps those before it)."""
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
        except OSError as e:
            raise cannot_write(self.path, e) from None

    def close(self) -> None:
        self.file.close()


class MetricsLog(JsonLines):
    """metrics.jsonl, the console line of each round, and the further sinks."""

    def __init__(self, run_dir: Path, total_rounds: int, kept: list[dict], sinks: list):
        """`sinks`: further receivers of each record (fedmpi.sinks), closed with the log."""
        super().__init__(run_dir / "metrics.jsonl", kept)
        self.total_rounds = total_rounds
        self.sinks = sinks

    def write(self, record: dict) -> None:
        self.append(record)
        print(console_line(record, self.total_rounds), flush=True)
        for sink in self.sinks:
            sink.write(record)

    def close(self) -> None:
        super().close()
        for sink in self.sinks:
            sink.close()
        self.sinks = []


def console_line(r: dict, total_rounds: int) -> str:
    width = len(str(total_rounds))
    parts = [f"round {r['round']:>{width}}/{total_rounds}"]
    if "clients" in r:
        short = [f"{len(r[k])} {k.split('_')[0]}" for k in ("dropped_clients", "partial_clients") if r.get(k)]
        parts.append(f"clients {len(r['clients']):>3}" + (f" ({', '.join(short)})" if short else ""))
    if r.get("train_loss") is not None:  # None: every client was dropped (fedmpi.system)
        parts.append(f"train loss {r['train_loss']:.4f}")
    if "test_accuracy" in r:
        parts.append(f"test acc {100 * r['test_accuracy']:6.2f}%")
    if "client_accuracy" in r:
        c = r["client_accuracy"]
        parts.append(f"clients' acc p10/p50 {100 * c['p10']:.1f}/{100 * c['p50']:.1f}%" if c["clients"]
                     else "clients' acc: none with test data")
    if "epsilon" in r:
        parts.append("ε ∞ (no noise)" if r["epsilon"] is None else f"ε {r['epsilon']:.3g}")
    if r.get("skipped_clients"):
        parts.append(f"skipped {r['skipped_clients']}")
    if "seconds" in r:
        parts.append(f"{r['seconds']:.2f} s")
    return " | ".join(parts)


def read_metrics(run_dir: Path, notice=None) -> list[dict]:
    """The records of metrics.jsonl, each checked: a last line torn by a kill mid-write is dropped
    (and `notice` called with why; that round is redone on resume), damage elsewhere is a FedMPIError
    naming the line."""
    def check(record):
        if not 0 <= record.get("test_accuracy", 0) <= 1:  # a changed digit can make 990.69 %
            raise ValueError(f"test_accuracy {record['test_accuracy']} outside [0, 1]")
    return read_records(Path(run_dir) / "metrics.jsonl", check, notice)


def read_records(path: Path, check, notice=None) -> list[dict]:
    """The records of a JSON-lines file of rounds (none if it does not exist), each a dict with an integer
    `round` that check(record) accepts (it raises ValueError): a last line torn by a kill mid-write is
    dropped (and `notice` called with why), damage elsewhere is a FedMPIError naming the line."""
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not (isinstance(record, dict) and isinstance(record.get("round"), int)):
                raise ValueError("not a round's record")
            check(record)
        except (ValueError, TypeError, KeyError) as e:
            if number == len(lines):  # the last line, without its newline: torn by a stop mid-write
                if notice:
                    notice(f"{path}: line {number} was torn by a stop mid-write; dropped")
                break
            raise FedMPIError(f"{path}: line {number} is damaged ({e}); fix or delete that line") from None
        records.append(record)
    return records


def write_json(path: Path, data: dict) -> None:
    write_atomically(path, (json.dumps(data, indent=2) + "\n").encode())
