"""Heterogeneous clients on a virtual clock (fedmpi/system.py): stragglers, a deadline, per-client speeds,
availability.

A sequential float64 FedAvg / FedProx written here from the papers and the documented contract (README,
"Heterogeneous clients"): each round's stragglers (FedProx paper: a share F of the sampled clients does
1 to E−1 epochs) drawn from SeedSequence([4, seed, t]), lognormal speeds from SeedSequence([5, seed]), a
client's steps cut to those that fit before the deadline; FedAvg drops every client that did not do its
E epochs, FedProx averages the partial work. After 3 rounds of 10 clients of unequal sizes fedmpi on 3
ranks agrees with it to 1e-9, and every record's virtual_time with the clock computed here. A run on 1
rank and on 3 gives the same weights bit for bit; a kill -9 and a --resume on another rank count give
the uninterrupted run's weights and records (virtual_time included).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedmpi.data import Federation
from fedmpi.models import build_model
from helpers import assert_rank_independent_and_resumable, comparable, final_weights, train

C, E, B, LR, ROUNDS, SEED = 0.25, 2, 50, 0.05, 3, 3
STEP_SECONDS, BANDWIDTH, LATENCY = 0.05, 1.0, 0.05  # the defaults
BASE = ["--fraction", str(C), "--epochs", str(E), "--batch-size", str(B), "--lr", str(LR), "--seed", str(SEED),
        "--threads", "1", "--eval-every", "100"]
CASES = {  # options as flags; the same keys drive the reference
    "fedavg drops stragglers": dict(stragglers=0.5),
    "fedprox uses stragglers' work": dict(algorithm="fedprox", prox_mu=0.0, stragglers=0.5),
    "fedprox, lognormal speeds, deadline and stragglers": dict(algorithm="fedprox", prox_mu=0.1, stragglers=0.3,
                                                               client_speed="lognormal", speed_sigma=1.0,
                                                               deadline=6.0),
    "fedprox, speeds from a CSV, deadline, one client at a time": dict(algorithm="fedprox", prox_mu=0.0,
                                                                       client_speed="csv", deadline=4.0,
                                                                       stack_clients=1),
    "fedavg, availability and a trace of online intervals": dict(availability=0.3, availability_trace="trace",
                                                                 client_speed="lognormal", speed_sigma=1.0),
}


@pytest.fixture
def fed(federation):
    return federation(clients=40, unbalance=1.0)  # 40 clients of 60 to 6,000 examples: 2 to 120 steps an epoch


def write_speeds(path, num_clients: int) -> None:
    """Per-client speed, bandwidth and latency: every fifth client's upload alone outlasts any deadline here."""
    rng = np.random.default_rng(7)
    rows = [f"{k},{rng.uniform(0.2, 3):.4f},{rng.uniform(0.5, 5):.3f},{20.0 if k % 5 == 0 else 0.1}"
            for k in range(num_clients)]
    path.write_text("client,speed,bandwidth,latency\n" + "\n".join(reversed(rows)) + "\n")


def write_trace(path, num_clients: int) -> None:
    """Online intervals for the even clients (the odd ones, without a row, are always online)."""
    rng = np.random.default_rng(8)
    rows = [f"{k},{start:.3f},{start + rng.uniform(5, 40):.3f}" for k in range(0, num_clients, 2)
            for start in rng.uniform(0, 60, size=2)]
    path.write_text("client,start,end\n" + "\n".join(rows) + "\n")


def online_at(options: dict, trace_csv, num_clients: int, round_: int, clock: float) -> np.ndarray | None:
    """Who is online at round t's start: each with probability `availability` (SeedSequence([7, seed, t])),
    and an even client only within one of its trace's intervals; None: everyone, always."""
    if "availability" not in options:
        return None
    draws = np.random.default_rng(np.random.SeedSequence([7, SEED, round_])).random(num_clients)
    online = draws < options["availability"]
    table = np.loadtxt(trace_csv, delimiter=",", skiprows=1, ndmin=2)
    for k in range(0, num_clients, 2):
        rows = table[table[:, 0] == k]
        online[k] &= bool(((rows[:, 1] <= clock) & (clock < rows[:, 2])).any())
    return online


def systems(options: dict, fed_dir, speeds_csv) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(speed, bandwidth, latency) of every client, as the options say."""
    k = Federation(fed_dir).num_clients
    kind = options.get("client_speed", "constant")
    if kind == "csv":
        table = np.loadtxt(speeds_csv, delimiter=",", skiprows=1)
        table = table[np.argsort(table[:, 0])]
        return table[:, 1], table[:, 2], table[:, 3]
    speed = np.ones(k)
    if kind == "lognormal":
        z = np.random.default_rng(np.random.SeedSequence([5, SEED])).standard_normal(k)
        speed = np.exp(options["speed_sigma"] * z)
    return speed, np.full(k, BANDWIDTH), np.full(k, LATENCY)


def reference(fed_dir, options: dict, speeds_csv=None, trace_csv=None) -> tuple[np.ndarray, list[float], int, int]:
    """Sequential FedAvg / FedProx with heterogeneous clients in float64: final weights, each round's
    virtual_time, how many clients trained only in part and how many were dropped over all rounds, and
    each round's clients."""
    fed = Federation(fed_dir)
    model = build_model("2nn", fed.input_shape, fed.num_classes, SEED).double()
    params = list(model.parameters())
    w = torch.cat([p.detach().reshape(-1) for p in params])
    K, m = fed.num_clients, max(int(round(C * fed.num_clients)), 1)
    mean, std = (torch.tensor(fed.manifest["normalize"][key], dtype=torch.float64).view(-1, 1, 1)
                 for key in ("mean", "std"))
    prox = options.get("algorithm") == "fedprox"
    mu = options.get("prox_mu", 0.0)
    speed, bandwidth, latency = systems(options, fed_dir, speeds_csv)
    upload = len(w) * 8 / (bandwidth * 1e6) + latency  # float64 weights
    deadline = options.get("deadline", 0.0)
    clock, times, partial, dropped, sampled = 0.0, [], 0, 0, []
    for r in range(1, ROUNDS + 1):
        online = online_at(options, trace_csv, K, r, clock)
        ids = np.arange(K) if online is None else np.flatnonzero(online)
        chosen = np.sort(np.random.default_rng(np.random.SeedSequence([0, SEED, r])).choice(
            K if online is None else ids, min(m, len(ids)), replace=False))
        sampled.append(chosen.tolist())
        per_epoch = np.array([math.ceil(fed.sizes[k] / B) for k in chosen])
        full = E * per_epoch
        work = full.copy()
        if options.get("stragglers"):
            rng = np.random.default_rng(np.random.SeedSequence([4, SEED, r]))
            n = len(chosen)
            slow = rng.choice(n, n - round(n * (1 - options["stragglers"])), replace=False)
            work[slow] = rng.integers(1, E, size=len(slow)) * per_epoch[slow]
        cut = False
        if deadline:
            fit = np.array([math.floor(max(deadline - upload[k], 0) * speed[k] / STEP_SECONDS) for k in chosen])
            cut = bool((fit < work).any())
            work = np.minimum(work, fit)
        longest = max(work[i] * STEP_SECONDS / speed[k] + upload[k] for i, k in enumerate(chosen))
        clock += deadline if cut else longest
        times.append(clock)
        total, weight = torch.zeros_like(w), 0
        for i, k in enumerate(chosen):
            steps = int(work[i]) if work[i] == full[i] or (prox and work[i] > 0) else 0
            partial += 0 < steps < full[i]
            dropped += steps == 0
            if not steps:
                continue
            x, y = fed.load_client(int(k))
            x, y = (torch.from_numpy(x).double() / 255 - mean) / std, torch.from_numpy(y)
            torch.nn.utils.vector_to_parameters(w.clone(), params)
            state = np.random.SeedSequence([1, SEED, r, int(k)]).generate_state(1, np.uint64)[0]
            g = torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)
            batches = [perm[j:j + B] for perm in (torch.randperm(len(y), generator=g) for _ in range(E))
                       for j in range(0, len(y), B)]
            for idx in batches[:steps]:  # the client's first `steps` steps of its E epochs
                current = torch.cat([p.reshape(-1) for p in params])
                grads = torch.autograd.grad(F.cross_entropy(model(x[idx]), y[idx]), params)
                flat = torch.cat([q.reshape(-1) for q in grads]) + mu * (current.detach() - w)
                torch.nn.utils.vector_to_parameters(current.detach() - LR * flat, params)
            total += len(y) * (torch.cat([p.detach().reshape(-1) for p in params]) - w)
            weight += len(y)
        if weight:
            w = w + total / weight
    return w.numpy(), times, partial, dropped, sampled


def flags(options: dict, speeds_csv, trace_csv) -> list[str]:
    out = []
    for key, value in options.items():
        out += ["--" + key.replace("_", "-"), {"csv": str(speeds_csv), "trace": str(trace_csv)}.get(value, str(value))]
    return out


@pytest.mark.parametrize("case", CASES)
def test_heterogeneous_clients_equal_the_sequential_reference(case, fed, tmp_path):
    options = CASES[case]
    speeds_csv, trace_csv = tmp_path / "speeds.csv", tmp_path / "trace.csv"
    write_speeds(speeds_csv, Federation(fed).num_clients)
    write_trace(trace_csv, Federation(fed).num_clients)
    run = train(3, fed, tmp_path / "run", *BASE, "--rounds", str(ROUNDS), "--precision", "float64",
                *flags(options, speeds_csv, trace_csv))
    expected, times, partial, dropped, sampled = reference(fed, options, speeds_csv, trace_csv)
    assert np.abs(final_weights(tmp_path / "run") - expected).max() < 1e-9
    records = [r for r in comparable(tmp_path / "run") if r["round"] > 0]
    assert [r["clients"] for r in records] == sampled
    np.testing.assert_allclose([r["virtual_time"] for r in records], times, rtol=1e-12)
    assert sum(len(r.get("partial_clients", [])) for r in records) == partial
    assert sum(len(r.get("dropped_clients", [])) for r in records) == dropped
    # each case exercises what it names: FedProx trains partial work, FedAvg and a too-slow upload drop,
    # availability samples fewer than m clients, among the online ones
    if "availability" in options:
        assert min(len(r["clients"]) for r in records) < max(len(r["clients"]) for r in records)
    else:
        assert partial > 0 if options.get("algorithm") == "fedprox" else dropped > 0, (partial, dropped)
    if options.get("client_speed") == "csv":
        assert dropped > 0  # the clients whose upload outlasts the deadline
    print(run.stdout.splitlines()[-2])


def test_heterogeneous_runs_do_not_depend_on_the_rank_count_and_resume_exactly(fed, tmp_path):
    """Stragglers and a deadline on lognormal speeds, FedProx using the partial work (masked stacks of
    clients cut at different steps), availability with a trace, float32: 1 rank and 3 ranks give the same
    weights bit for bit; kill -9 after round 2 (of 5), --resume on 2 ranks (which replays the clock for the
    trace): the uninterrupted run's weights and records, virtual_time included."""
    case = {**CASES["fedprox, lognormal speeds, deadline and stragglers"], "availability": 0.8,
            "availability_trace": "trace"}
    trace_csv = tmp_path / "trace.csv"
    write_trace(trace_csv, Federation(fed).num_clients)
    run_flags = [*BASE, "--rounds", "5", "--checkpoint-every", "1", *flags(case, None, trace_csv)]
    assert_rank_independent_and_resumable(fed, tmp_path, run_flags, rounds=5, kill_after=2)
