"""The simulated clients' systems (compute speed, network) and the virtual clock of synchronous rounds.

Real federations differ in speed, and a round waits for its slowest client;
fedmpi's own wall-clock time says nothing about that. So each client gets a
simulated system, seeded and the same on every rank:

    duration_k = steps_k · step_seconds / speed_k + model_bytes / bandwidth_k + latency_k

(one upload of the model's values; the broadcast is not counted). A
synchronous round lasts until its slowest sampled client has done its work,
or until the deadline when the deadline cut a client short; `virtual_time`
in the round records adds them up.

A client's work is its E epochs, fewer for a straggler (`stragglers` F: that
share of each round's clients does 1 to E−1 epochs, as in the FedProx
paper's systems heterogeneity), and no more steps than fit before the
`deadline`. An algorithm that uses partial work (`Algorithm.partial_work`,
FedProx) trains those clients for the steps they did; the others (FedAvg)
drop them. A client with no step done is dropped by every algorithm.

Availability: a round samples its m clients among those online at its start
(all of them when fewer are): each client is online with probability
`availability`, drawn anew each round, and, with an `availability_trace`,
only within its intervals of virtual time.

Randomness (fedmpi.fedavg's contract): lognormal speeds exp(σ·z_k) with z
standard normal from SeedSequence([5, seed]), one per client; the
stragglers of round t from SeedSequence([4, seed, t]): numpy's
default_rng(...).choice(m, m − round(m·(1 − F)), replace=False) of the
round's slots (its sampled clients in increasing id), then
.integers(1, E, size=that many) epochs for them, in that order; who is
online in round t: default_rng(SeedSequence([7, seed, t])).random(K) <
availability, and the round's m then by
default_rng(SeedSequence([0, seed, t])).choice(online ids, m, replace=False).
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from fedmpi.errors import FedMPIError
from fedmpi.fedavg import SAMPLING, plan_round

STRAGGLERS, SPEEDS, AVAILABILITY = 4, 5, 7  # fedmpi.fedavg's SeedSequence streams 0-3, then these
MB = 1e6  # bandwidth is in MB/s


@dataclass(frozen=True)
class RoundPlan:
    """Who of a round's sampled clients trains how many local steps, and how long the round lasts."""

    steps: np.ndarray   # (m,) the local steps each sampled client trains; 0: it is dropped
    full: np.ndarray    # (m,) the steps of E whole epochs
    seconds: float      # the round's length on the virtual clock
    # asynchronous execution (fedmpi.schedule): each client's start version and start number; None: a
    # synchronous round, whose clients all start from the broadcast weights and shuffle by the round
    versions: np.ndarray | None = None
    starts: np.ndarray | None = None

    def cap(self, slot: int) -> int | None:
        """The most steps the client in `slot` takes (the engine's `steps`), None for all of its E epochs."""
        return None if self.steps[slot] == self.full[slot] else int(self.steps[slot])


class SystemModel:
    """Every client's speed, bandwidth and latency, and each round's plan (`plan`)."""

    def __init__(self, cfg, sizes: np.ndarray, model_bytes: int, partial_work: bool, inputs: Inputs):
        """`sizes`: the clients' numbers of examples; `model_bytes`: one upload of the model's values;
        `partial_work`: whether the algorithm uses a client's partial work (else drops such clients);
        `inputs`: read_inputs's."""
        self.cfg, self.sizes, self.partial_work = cfg, sizes, partial_work
        k = len(sizes)
        # per client, (K,) each: a number for all is a read-only view of it (no K-sized copy)
        self.speed, bandwidth, latency = (np.broadcast_to(np.asarray(v, dtype=float), (k,)) for v in inputs.speeds)
        self.upload = model_bytes / (bandwidth * MB) + latency  # seconds
        self.trace = inputs.trace
        self.clock = 0.0  # virtual seconds at the end of the last planned round
        batch = cfg.batch_size
        self.per_epoch = np.where((batch == 0) | (sizes <= batch), 1, -(-sizes // max(batch, 1)))

    def sample(self, round_: int | None, m: int) -> np.ndarray:
        """Round t's clients: fedavg.plan_round's m of the K, or, with availability, m of those online at
        the round's start (all of them when fewer are online), drawn alike."""
        if round_ is None:
            return np.empty(0, dtype=np.int64)
        online = self.online(round_)
        if online is None:
            return plan_round(self.cfg.seed, round_, len(self.sizes), m)
        ids = np.flatnonzero(online)
        rng = np.random.default_rng(np.random.SeedSequence([SAMPLING, self.cfg.seed, round_]))
        return np.sort(rng.choice(ids, min(m, len(ids)), replace=False))

    def online(self, round_: int) -> np.ndarray | None:
        """Which clients are online at round t's start (`clock`), or None when all are (availability 1, no
        trace): each with probability `availability`, drawn from SeedSequence([7, seed, t]), and within
        one of its trace's intervals."""
        if self.cfg.availability == 1 and self.trace is None:
            return None
        online = np.ones(len(self.sizes), dtype=bool)
        if self.cfg.availability < 1:
            rng = np.random.default_rng(np.random.SeedSequence([AVAILABILITY, self.cfg.seed, round_]))
            online &= rng.random(len(self.sizes)) < self.cfg.availability
        if self.trace is not None:
            online &= self.trace.online(self.clock)
        return online

    def plan(self, round_: int | None, sampled: np.ndarray) -> RoundPlan:
        """Round t's plan for its sampled clients (sorted ids), which moves the clock to the round's end;
        an empty one for the last step (None). A round without clients (none online) lasts until the
        trace's next interval starts, if one does."""
        if round_ is None:
            return RoundPlan(np.zeros(0, np.int64), np.zeros(0, np.int64), 0.0)
        if not len(sampled):
            seconds = self.trace.next_start(self.clock) - self.clock if self.trace is not None else 0.0
            self.clock += seconds
            return RoundPlan(np.zeros(0, np.int64), np.zeros(0, np.int64), seconds)
        cfg = self.cfg
        per_epoch = self.per_epoch[sampled]
        full = cfg.epochs * per_epoch
        work = full.copy()
        if cfg.stragglers:
            rng = np.random.default_rng(np.random.SeedSequence([STRAGGLERS, cfg.seed, round_]))
            m = len(sampled)
            slow = rng.choice(m, m - int(round(m * (1 - cfg.stragglers))), replace=False)
            work[slow] = rng.integers(1, cfg.epochs, size=len(slow)) * per_epoch[slow]
        speed, upload = self.speed[sampled], self.upload[sampled]
        cut = np.zeros(len(sampled), dtype=bool)
        if cfg.deadline:
            fit = np.floor(np.maximum(cfg.deadline - upload, 0.0) * speed / cfg.step_seconds).astype(np.int64)
            cut = fit < work
            work = np.minimum(work, fit)
        steps = np.where((work == full) | (self.partial_work & (work > 0)), work, 0)
        seconds = float(cfg.deadline) if cut.any() else float(np.max(work * cfg.step_seconds / speed + upload))
        self.clock += seconds
        return RoundPlan(steps, full, seconds)

    def duration(self, k: int) -> float:
        """Client k's virtual seconds for its E epochs and upload."""
        return float(self.cfg.epochs * self.per_epoch[k] * self.cfg.step_seconds / self.speed[k] + self.upload[k])


class Trace:
    """Clients' online intervals [start, end) in virtual seconds; a client without one is always online."""

    def __init__(self, clients: np.ndarray, starts: np.ndarray, ends: np.ndarray, num_clients: int):
        self.clients, self.starts, self.ends = clients, starts, ends
        self.listed = np.zeros(num_clients, dtype=bool)
        self.listed[clients] = True

    def online(self, t: float) -> np.ndarray:
        online = ~self.listed
        online[self.clients[(self.starts <= t) & (t < self.ends)]] = True
        return online

    def next_start(self, t: float) -> float:
        """The first interval start after t (t itself when none comes)."""
        later = self.starts[self.starts > t]
        return float(later.min()) if len(later) else t


def read_csv(path: str, field: str, missing: str = "") -> tuple[list[dict], list[str]]:
    """The rows of a CSV file with a header, and its columns; a file that is missing or is not UTF-8 CSV
    is one line naming the config field."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise FedMPIError(f"config field '{field}': {path}: not found{missing}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise FedMPIError(f"config field '{field}': {path}: cannot read it as CSV text: {e}") from None
    return rows, list(rows[0].keys()) if rows else []


def client_id(value, line: int, num_clients: int, bad) -> int:
    """A row's client id, one of the federation's 0..K−1."""
    try:
        k = int(value)
    except (TypeError, ValueError):
        bad(f"line {line}: client must be an integer id, got {value!r}")
    if not 0 <= k < num_clients:
        bad(f"line {line}: client {k} is not one of the federation's 0..{num_clients - 1}")
    return k


def read_trace(path: str, num_clients: int) -> Trace:
    """A CSV file with the header client,start,end: one row per online interval (a client may have many)."""
    def bad(why):
        raise FedMPIError(f"config field 'availability_trace': {path}: {why}")

    rows, columns = read_csv(path, "availability_trace")
    if columns[:3] != ["client", "start", "end"]:
        bad(f"needs the header client,start,end (one row per online interval), got {columns}")
    clients, times = np.zeros(len(rows), dtype=np.int64), np.zeros((len(rows), 2))
    for line, row in enumerate(rows, start=2):
        clients[line - 2] = client_id(row["client"], line, num_clients, bad)
        try:
            start, end = times[line - 2] = [float(row["start"]), float(row["end"])]
        except (TypeError, ValueError):
            bad(f"line {line}: start and end must be numbers, got {row['start']!r}, {row['end']!r}")
        if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
            bad(f"line {line}: an interval needs 0 <= start < end (virtual seconds), got {start:g}, {end:g}")
    return Trace(clients, times[:, 0], times[:, 1], num_clients)


class Inputs(NamedTuple):
    """What the system model reads from the config's files (read_inputs)."""

    speeds: tuple   # speeds(): (speed, bandwidth, latency), each (K,) or one number for all
    trace: Trace | None


def read_inputs(cfg, num_clients: int) -> Inputs:
    """The speeds CSV and the availability trace, read and checked before torch is imported, so that a
    mistake in either is one line within a second (and async's concurrency against K)."""
    if cfg.execution == "async" and cfg.concurrency > num_clients:
        raise FedMPIError(f"config field 'concurrency': {cfg.concurrency} clients training at once, but the "
                          f"federation has only {num_clients}")
    return Inputs(speeds(cfg, num_clients),
                  read_trace(cfg.availability_trace, num_clients) if cfg.availability_trace else None)


def speeds(cfg, num_clients: int):
    """(speed, bandwidth in MB/s, latency in s) of the K clients: each an array (K,) or one number for all."""
    if cfg.client_speed == "constant":
        return 1.0, cfg.bandwidth, cfg.latency
    if cfg.client_speed == "lognormal":
        z = np.random.default_rng(np.random.SeedSequence([SPEEDS, cfg.seed])).standard_normal(num_clients)
        return np.exp(cfg.speed_sigma * z), cfg.bandwidth, cfg.latency
    return read_speeds(cfg.client_speed, num_clients, cfg.bandwidth, cfg.latency)


def read_speeds(path: str, num_clients: int, bandwidth: float, latency: float):
    """A CSV file with a header: `client` and `speed`, optionally `bandwidth` (MB/s) and `latency` (s), one
    row for each client 0..K−1 in any order; a missing column is the config's value for everyone."""
    def bad(why):
        raise FedMPIError(f"config field 'client_speed': {path}: {why}")

    rows, columns = read_csv(path, "client_speed", " (give constant, lognormal, or a CSV file of per-client speeds)")
    if "client" not in columns or "speed" not in columns:
        bad(f"needs a header with the columns client and speed (optional: bandwidth, latency), got {columns}")
    values = {name: np.full(num_clients, np.nan) for name in ("speed", "bandwidth", "latency") if name in columns}
    for line, row in enumerate(rows, start=2):
        k = client_id(row["client"], line, num_clients, bad)
        if not math.isnan(values["speed"][k]):
            bad(f"line {line}: client {k} is listed twice")
        for name, column in values.items():
            try:
                column[k] = float(row[name])
            except (TypeError, ValueError):
                column[k] = math.nan
            low_ok = column[k] >= 0 if name == "latency" else column[k] > 0
            if not (math.isfinite(column[k]) and low_ok):
                bad(f"line {line}: {name} must be a finite number {'>= 0' if name == 'latency' else '> 0'}, "
                    f"got {row[name]!r}")
    missing = np.flatnonzero(np.isnan(values["speed"]))
    if len(missing):
        bad(f"{len(missing)} client(s) have no row, the first {int(missing[0])}; list all {num_clients}")
    return values["speed"], values.get("bandwidth", bandwidth), values.get("latency", latency)
