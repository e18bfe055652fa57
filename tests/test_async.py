"""Asynchronous FL (FedBuff, Nguyen et al. 2022) on the virtual clock (fedmpi/schedule.py).

The reference is a sequential event-driven FedBuff written here in float64 from the paper and the
documented contract (README, "Asynchronous clients"): `concurrency` clients train at once, each from
the model current at its start, and finish after E·⌈n_k/B⌉·step_seconds/speed_k + upload seconds;
finished updates fill a buffer of `buffer_size`, whose staleness-weighted mean (1/√(1 + τ)) is one
server update; a finished client is replaced at once (after the update, if it filled the buffer).
Unlike fedmpi, which trains each buffered client at the server update that uses it from the model
version kept since its start, the reference trains a client when it starts. After 4 server updates of
clients of unequal sizes fedmpi on 3 ranks agrees to 1e-9, with the same buffers, staleness (some > 0)
and virtual times. 1 rank and 3 give the same weights bit for bit; a kill -9 mid-stream and a --resume
on another rank count give the uninterrupted run. With an availability trace, a client starts only within one
of its intervals, and a start with no free client online waits for the next interval.

With DP (DP-FedBuff): each update clipped to S, then weighted, and N(0, (zS)²) from SeedSequence([2, seed, t])
added to the buffer's sum before it is divided by buffer_size; ε after each server update is that of the
client in the most buffers so far, N of them: N composed Gaussians of noise multiplier z/2, which the test
asks dp-accounting's PLD accountant for.
"""
from __future__ import annotations

import heapq
import json
import math

import dp_accounting
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedmpi.data import Federation
from fedmpi.models import build_model
from helpers import assert_rank_independent_and_resumable, comparable, final_weights, train

E, B, LR, SEED, SIGMA = 1, 50, 0.05, 3, 1.0
STEP_SECONDS, BANDWIDTH, LATENCY = 0.05, 1.0, 0.05  # the defaults
BASE = ["--epochs", str(E), "--batch-size", str(B), "--lr", str(LR), "--seed", str(SEED), "--threads", "1",
        "--eval-every", "100", "--execution", "async", "--client-speed", "lognormal", "--speed-sigma", str(SIGMA)]


@pytest.fixture
def fed(federation):
    return federation(clients=40, unbalance=1.0)  # 40 clients of 60 to 6,000 examples


def fedbuff(fed_dir, rounds: int, concurrency: int, buffer_size: int, dp: tuple[float, float] | None = None,
            trace: np.ndarray | None = None):
    """Sequential FedBuff in float64 (DP-FedBuff with dp = (S, z); with a trace, rows (client, start, end), a
    client starts only within one of its intervals, and a start with none online waits for the next interval):
    the final weights, per server update (clients, staleness, time), and how many starts waited."""
    fed = Federation(fed_dir)
    model = build_model("2nn", fed.input_shape, fed.num_classes, SEED).double()
    params = list(model.parameters())
    w = torch.cat([p.detach().reshape(-1) for p in params])
    K = fed.num_clients
    mean, std = (torch.tensor(fed.manifest["normalize"][key], dtype=torch.float64).view(-1, 1, 1)
                 for key in ("mean", "std"))
    speed = np.exp(SIGMA * np.random.default_rng(np.random.SeedSequence([5, SEED])).standard_normal(K))
    upload = len(w) * 8 / (BANDWIDTH * 1e6) + LATENCY

    def trained(k: int, j: int) -> torch.Tensor:
        """Client k's Δ from the current w, E epochs, shuffled by its start number j."""
        x, y = fed.load_client(k)
        x, y = (torch.from_numpy(x).double() / 255 - mean) / std, torch.from_numpy(y)
        torch.nn.utils.vector_to_parameters(w.clone(), params)
        state = np.random.SeedSequence([1, SEED, j, k]).generate_state(1, np.uint64)[0]
        g = torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)
        for _ in range(E):
            perm = torch.randperm(len(y), generator=g)
            for i in range(0, len(y), B):
                idx = perm[i:i + B]
                grads = torch.autograd.grad(F.cross_entropy(model(x[idx]), y[idx]), params)
                with torch.no_grad():
                    for p, gr in zip(params, grads):
                        p -= LR * gr
        return torch.cat([p.detach().reshape(-1) for p in params]) - w

    rng = np.random.default_rng(np.random.SeedSequence([6, SEED]))
    running, busy, now, version, started, waited = [], set(), 0.0, 0, 0, 0

    def start():
        nonlocal started, waited
        if trace is not None:
            online = {int(c) for c, a, b in trace if a <= now < b} | (set(range(K)) - set(trace[:, 0].astype(int)))
            if not online - busy:
                waited += 1
                later = trace[trace[:, 1] > now, 1]
                if len(later):  # after the finishes at that time; the started number breaks no tie with them
                    heapq.heappush(running, (later.min(), math.inf, -1, -1, None))
                return
        k = int(rng.integers(K))
        while k in busy or (trace is not None and k not in online):
            k = int(rng.integers(K))
        started += 1
        busy.add(k)
        duration = E * math.ceil(fed.sizes[k] / B) * STEP_SECONDS / speed[k] + upload
        heapq.heappush(running, (now + duration, started, k, version, trained(k, started)))

    for _ in range(concurrency):
        start()
    updates, buffered = [], []
    while len(updates) < rounds:
        now, _, k, began, delta = heapq.heappop(running)
        if k < 0:  # a start that waited for the trace
            start()
            continue
        busy.discard(k)
        buffered.append((k, version - began, delta))
        if len(buffered) == buffer_size:
            if dp:
                clip, z = dp
                total = sum(d * min(1.0, clip / float(d.norm())) / math.sqrt(1 + tau) for _, tau, d in buffered)
                total += torch.from_numpy(np.random.default_rng(np.random.SeedSequence([2, SEED, len(updates) + 1]))
                                          .normal(0.0, z * clip, len(w)))
            else:
                total = sum(d / math.sqrt(1 + tau) for _, tau, d in buffered)
            w = w + total / buffer_size
            updates.append(([k for k, _, _ in buffered], [tau for _, tau, _ in buffered], now))
            buffered, version = [], version + 1
        start()
    return w.numpy(), updates, waited


def pld_epsilon(z: float, releases: int, delta: float) -> float:
    """dp-accounting's PLD accountant: `releases` Gaussians whose mean moves by 1 (2S) against std z/2 (zS)."""
    accountant = dp_accounting.pld.PLDAccountant()
    accountant.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z / 2), releases))
    return accountant.get_epsilon(delta)


def write_trace(path) -> np.ndarray:
    """Every client online in [0, 2) s; then odd clients from 4 s and even ones from 5 s: the starts between
    2 and 4 s wait, and at 4 s only odd clients may start."""
    rows = [(k, 0.0, 2.0) for k in range(40)] + [(k, 4.0 + (k % 2 == 0), 1e3) for k in range(40)]
    path.write_text("client,start,end\n" + "".join(f"{k},{a},{b}\n" for k, a, b in rows))
    return np.array(rows)


@pytest.mark.parametrize("dp, concurrency, trace", [(None, 8, False), ((0.5, 3.0), 6, False), (None, 8, True)],
                         ids=["fedbuff", "dp-fedbuff", "fedbuff-with-a-trace"])
def test_async_fedbuff_equals_a_sequential_event_driven_fedbuff(dp, concurrency, trace, fed, tmp_path):
    """DP-FedBuff with 6 clients at once: one client is in two of the 4 buffers."""
    rounds, buffer_size = 4, 3
    dp_flags = ["--dp-clip", str(dp[0]), "--dp-noise-multiplier", str(dp[1]), "--dp-delta", "1e-5"] if dp else []
    intervals = write_trace(tmp_path / "trace.csv") if trace else None
    trace_flags = ["--availability-trace", str(tmp_path / "trace.csv")] if trace else []
    train(3, fed, tmp_path / "run", *BASE, "--rounds", str(rounds), "--precision", "float64",
          "--concurrency", str(concurrency), "--buffer-size", str(buffer_size), *dp_flags, *trace_flags)
    expected, updates, waited = fedbuff(fed, rounds, concurrency, buffer_size, dp, intervals)
    assert (waited > 0) == trace
    records = [r for r in comparable(tmp_path / "run") if r["round"] > 0]
    assert [r["clients"] for r in records] == [u[0] for u in updates]
    assert [r["staleness"] for r in records] == [u[1] for u in updates]
    assert max(max(u[1]) for u in updates) > 0  # stale updates were discounted
    np.testing.assert_allclose([r["virtual_time"] for r in records], [u[2] for u in updates], rtol=1e-12)
    assert np.abs(final_weights(tmp_path / "run") - expected).max() < 1e-9
    if dp:  # ε: of the client in the most buffers so far; PLD's ε is an upper bound, within 1e-6 of the exact one
        most = [int(np.bincount(np.concatenate([u[0] for u in updates[:t]])).max()) for t in range(1, rounds + 1)]
        assert most[-1] > 1  # a client took part twice
        for record, n in zip(records, most):
            assert pld_epsilon(dp[1], n, 1e-5) * (1 - 1e-6) <= record["epsilon"] <= pld_epsilon(dp[1], n, 1e-5)
        summary = json.loads((tmp_path / "run" / "summary.json").read_text())
        assert summary["dp"] == {"epsilon": records[-1]["epsilon"], "delta": 1e-5, "noise_multiplier": dp[1],
                                 "clip": dp[0], "sampling": "none claimed (asynchronous: the buffers follow from "
                                 "the seed and the system model)", "neighbouring": "replace-one",
                                 "accountant": "Gaussian DP, exact (Dong, Roth and Su 2022)",
                                 "most_participations": most[-1]}


def test_async_runs_do_not_depend_on_the_rank_count_and_resume_exactly(fed, tmp_path):
    """float32 DP-FedBuff: 1 rank and 3 ranks give the same weights bit for bit; kill -9 after server update 3
    (of 8), --resume on 2 ranks: the uninterrupted run's weights and records, ε included (the model versions
    that clients in flight started from, and how often each client took part, come back from the checkpoint)."""
    run_flags = [*BASE, "--rounds", "8", "--checkpoint-every", "1", "--concurrency", "12", "--buffer-size", "4",
                 "--dp-clip", "1", "--dp-noise-multiplier", "0.5"]
    assert_rank_independent_and_resumable(fed, tmp_path, run_flags, rounds=8, kill_after=3)
