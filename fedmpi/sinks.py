"""Where round records go besides metrics.jsonl and the console: TensorBoard, and a user's own sink.

A sink is a class made on rank 0 as `Sink(run_dir, config)` (config: the run's RunConfig), with
`write(record)` called once per round record and `close()` at the end. A record is a dict: round,
clients, train_loss, test_accuracy, test_loss, epsilon (DP), seconds, time {bcast, reduce, ...}; a
resumed run writes again the rounds after its checkpoint. `tensorboard = true` writes event files
under RUN/tensorboard/ (the `tensorboard` extra); `sink = "package.module:Class"` names a user's, imported
on rank 0 in set-up like a user's model (fedmpi.models), so a mistake is one line before anything runs.
"""
from __future__ import annotations

from pathlib import Path

from fedmpi import usercode
from fedmpi.errors import FedMPIError


class TensorBoard:
    """Every number of every record as a scalar, step = the round (nested ones as time/bcast, ...)."""

    def __init__(self, run_dir: Path, config, first_round: int = 0):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise FedMPIError("tensorboard = true needs TensorBoard: pip install 'fedmpi[tensorboard]'") from None
        # purge_step: a resumed run's rounds from its checkpoint on replace those of the interrupted job
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=first_round or None, flush_secs=10)

    def write(self, record: dict) -> None:
        for name, value in scalars(record):
            self.writer.add_scalar(name, value, record["round"])

    def close(self) -> None:
        self.writer.close()


def scalars(record: dict, prefix: str = "") -> list[tuple[str, float]]:
    """(name, value) of every number in the record, nested dicts as prefix/name; not the round itself."""
    found = []
    for key, value in record.items():
        if isinstance(value, dict):
            found += scalars(value, f"{prefix}{key}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key != "round":
            found.append((prefix + key, float(value)))
    return found


def user_sink(name: str):
    """The class that `sink = "package.module:Class"` names; a one-line FedMPIError if it cannot be had."""
    sink = usercode.load(name, "sink")
    if not (callable(sink) and all(callable(getattr(sink, m, None)) for m in ("write", "close"))):
        raise FedMPIError(f"config field 'sink': {name} is no class with write(record) and close()")
    return sink


def check(config) -> None:
    """In set-up, on rank 0: what the sinks need can be imported (a one-line FedMPIError if not)."""
    if config.tensorboard:
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError:
            raise FedMPIError("tensorboard = true needs TensorBoard: pip install 'fedmpi[tensorboard]'") from None
    if config.sink:
        user_sink(config.sink)


def open_sinks(run_dir: Path, config, first_round: int) -> list:
    """The sinks the config asks for, opened (rank 0, after set-up)."""
    sinks = [TensorBoard(run_dir, config, first_round)] if config.tensorboard else []
    if config.sink:
        sinks.append(user_sink(config.sink)(run_dir, config))
    return sinks
