"""Federated optimizers: each equals an independent sequential implementation written here, in float64.

The reference below is plain torch and numpy, written from the papers: FedProx adds μ/2‖w − w_t‖² to
the loss (fedmpi corrects the gradient instead), SCAFFOLD corrects each step's gradient by c − c_k
and updates the control variates by option II, the server optimizers follow Reddi et al. 2021
(Algorithm 2), DP-FedAvg clips each update to S, adds N(0, (zS)²) drawn from SeedSequence([2, seed,
round]) to the sum and divides by m; with lr_decay the clients' η of round t is η·decay^(t−1) (SCAFFOLD's
control variates too); client_momentum and weight_decay are torch.optim.SGD's (d = ∇ + λw, buffer = d at
a client's first step of the round, then ρ·buffer + d; w ← w − η·buffer), the algorithm's corrections part
of ∇. After 3 rounds of 3 clients (2NN, E=1, B=50) fedmpi on 3 ranks
and the reference agree to 1e-9 (float64 sums in another order: ~1e-16). A kill -9 mid-run and a
--resume on another rank count restore the server state, the control variates and the privacy
ledger: the result is that of an uninterrupted run, bit for bit.
"""
from __future__ import annotations

import functools
import json
import math
import os
import signal
import warnings
from importlib.metadata import version
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedmpi.algorithms import privacy
from fedmpi.config import MAX_DP, MIN_DP_NOISE
from fedmpi.data import Federation
from fedmpi.errors import FedMPIError
from fedmpi.metrics import read_metrics
from fedmpi.models import build_model
from helpers import final_weights, finish, launch, rank_pids, start_job, train, wait_for_round

C, E, B, LR, ROUNDS, SEED = 0.03, 1, 50, 0.05, 3, 5
BASE = ["--model", "2nn", "--fraction", str(C), "--epochs", str(E), "--batch-size", str(B), "--lr", str(LR),
        "--seed", str(SEED), "--precision", "float64", "--threads", "1", "--eval-every", "100"]
CASES = {
    "fedprox": dict(algorithm="fedprox", prox_mu=0.5),
    "fedavgm": dict(server_optimizer="momentum", server_lr=1.0, server_momentum=0.9),
    "fedadam": dict(server_optimizer="adam", server_lr=0.01, server_beta1=0.9, server_beta2=0.99, server_tau=1e-3),
    "fedyogi": dict(server_optimizer="yogi", server_lr=0.01, server_beta1=0.9, server_beta2=0.99, server_tau=1e-3),
    "fedadagrad": dict(server_optimizer="adagrad", server_lr=0.01, server_beta1=0.9, server_tau=1e-3),
    "scaffold": dict(algorithm="scaffold"),
    "dp-fedavg": dict(dp_clip=0.5, dp_noise_multiplier=1.0, dp_delta=1e-5),
    "lr-decay": dict(lr_decay=0.5),  # η_t = η · 0.5^(t−1)
    "scaffold-lr-decay": dict(algorithm="scaffold", lr_decay=0.7),  # its control variates use η_t
    # the clients' momentum and weight decay with SCAFFOLD's corrections (trained one client at a time)
    "scaffold-momentum-wd": dict(algorithm="scaffold", client_momentum=0.9, weight_decay=0.01, lr_decay=0.7),
}


def flags(options: dict) -> list[str]:
    return [f for key, value in options.items() for f in ("--" + key.replace("_", "-"), str(value))]


@functools.lru_cache
def fedavg_reference(fed_dir) -> np.ndarray:
    return reference(fed_dir, {})


def reference(fed_dir, options: dict, rounds: int = ROUNDS, model: str = "2nn", fraction: float = C,
              epochs: int = E) -> np.ndarray:
    """Sequential FedAvg and its variants, from the papers (see the module docstring)."""
    fed = Federation(fed_dir)
    model = build_model(model, fed.input_shape, fed.num_classes, SEED).double()
    params = list(model.parameters())
    w = torch.cat([p.detach().reshape(-1) for p in params])
    d, K = len(w), fed.num_clients
    m = max(int(round(fraction * K)), 1)
    rho, lam = options.get("client_momentum", 0.0), options.get("weight_decay", 0.0)
    mean, std = (torch.tensor(fed.manifest["normalize"][k], dtype=torch.float64).view(-1, 1, 1)
                 for k in ("mean", "std"))
    mu = options.get("prox_mu", 0.0) if options.get("algorithm") == "fedprox" else 0.0
    scaffold = options.get("algorithm") == "scaffold"
    control, c = torch.zeros(K, d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)
    opt, lr = options.get("server_optimizer", "sgd"), options.get("server_lr", 1.0)
    b1, b2, tau = options.get("server_beta1", 0.9), options.get("server_beta2", 0.99), options.get("server_tau", 1e-3)
    mom, v = np.zeros(d), np.full(d, tau * tau) if opt in ("adam", "yogi", "adagrad") else np.zeros(d)
    for r in range(1, rounds + 1):
        eta = LR * options.get("lr_decay", 1.0) ** (r - 1)
        chosen = np.sort(np.random.default_rng(np.random.SeedSequence([0, SEED, r])).choice(K, m, replace=False))
        total, weight, new_control = np.zeros(d), 0.0, {}
        for k in chosen:
            x, y = fed.load_client(int(k))
            x = (torch.from_numpy(x).double() / 255 - mean) / std
            y = torch.from_numpy(y)
            torch.nn.utils.vector_to_parameters(w.clone(), params)
            state = np.random.SeedSequence([1, SEED, r, int(k)]).generate_state(1, np.uint64)[0]
            g = torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)
            steps, buffer = 0, None  # the momentum buffer: each client's own, from its first step of the round
            for _ in range(epochs):
                perm = torch.randperm(len(y), generator=g)
                for i in range(0, len(y), B):
                    idx = perm[i:i + B]
                    current = torch.cat([p.reshape(-1) for p in params])
                    loss = F.cross_entropy(model(x[idx]), y[idx]) + mu / 2 * (current - w).pow(2).sum()
                    grads = torch.autograd.grad(loss, params)
                    with torch.no_grad():
                        flat = torch.cat([gr.reshape(-1) for gr in grads])
                        if scaffold:
                            flat = flat + c - control[k]
                        flat = flat + lam * current.detach()
                        buffer = flat if buffer is None else rho * buffer + flat
                        torch.nn.utils.vector_to_parameters(current.detach() - eta * buffer, params)
                    steps += 1
            wk = torch.cat([p.detach().reshape(-1) for p in params])
            delta = (wk - w).numpy()
            if scaffold:
                new_control[int(k)] = control[k] - c + (w - wk) / (steps * eta)
            if "dp_clip" in options:
                delta = delta * min(1.0, options["dp_clip"] / np.linalg.norm(delta))
                total += delta
            else:
                total += len(y) * delta
                weight += len(y)
        if "dp_clip" in options:
            noise = np.random.default_rng(np.random.SeedSequence([2, SEED, r])).normal(
                0.0, options["dp_noise_multiplier"] * options["dp_clip"], d)
            avg = (total + noise) / m
        else:
            avg = total / weight
        if opt == "sgd":
            step = lr * avg
        elif opt == "momentum":
            mom = options["server_momentum"] * mom + avg
            step = lr * mom
        else:
            mom = b1 * mom + (1 - b1) * avg
            if opt == "adam":
                v = b2 * v + (1 - b2) * avg ** 2
            elif opt == "yogi":
                v = v - (1 - b2) * avg ** 2 * np.sign(v - avg ** 2)
            else:
                v = v + avg ** 2
            step = lr * mom / (np.sqrt(v) + tau)
        w = w + torch.from_numpy(step)
        if scaffold:
            for k, ck in new_control.items():
                c = c + (ck - control[k]) / K
                control[k] = ck
    return w.numpy()


def wbk19_epsilon(z: float, k: int, m: int, rounds: int, delta: float, orders=range(2, 33)) -> float:
    """ε at δ of `rounds` rounds of m of K sampled without replacement, each the Gaussian of std z·S on a
    sum that replacing one client moves by 2S (RDP 2α/z² at order α): Theorem 9 of Wang, Balle and
    Kasiviswanathan (AISTATS 2019) at integer orders, which for ε(∞) = ∞ reads
    RDP'(α) ≤ log(1 + γ²C(α,2)·min(4(e^ε(2) − 1), 2e^ε(2)) + Σ_{j=3..α} γ^j C(α,j)·2e^((j−1)ε(j))) / (α − 1),
    γ = m/K, composed over the rounds and turned into ε by RDP + log(1 − 1/α) − log(δα)/(α − 1)
    (Canonne, Kamath, Steinke 2020, Prop. 12), minimised over α."""
    gamma, best = m / k, math.inf
    for a in orders:
        def rdp(j):
            return 2 * j / z**2
        terms = [0.0, 2 * math.log(gamma) + math.log(math.comb(a, 2))
                 + min(math.log(4) + math.log(math.expm1(rdp(2))), math.log(2) + rdp(2))]
        terms += [j * math.log(gamma) + math.log(math.comb(a, j)) + math.log(2) + (j - 1) * rdp(j)
                  for j in range(3, a + 1)]
        total = rounds * float(np.logaddexp.reduce(terms)) / (a - 1)
        best = min(best, total + math.log1p(-1 / a) - math.log(delta * a) / (a - 1))
    return max(best, 0.0)


@pytest.mark.parametrize("name", CASES)
def test_each_algorithm_equals_its_sequential_reference(name, federation, tmp_path):
    fed = federation()
    train(3, fed, tmp_path / "run", *BASE, "--rounds", str(ROUNDS), *flags(CASES[name]))
    got, expected = final_weights(tmp_path / "run"), reference(fed, CASES[name])
    fedavg = fedavg_reference(fed)
    assert np.abs(got - expected).max() < 1e-9, f"{name}: {np.abs(got - expected).max():.2e}"
    assert np.abs(expected - fedavg).max() > 1e-4  # the variant does differ from plain FedAvg
    records = read_metrics(tmp_path / "run")
    if name == "dp-fedavg":
        epsilons = [r["epsilon"] for r in records if "epsilon" in r]
        assert len(epsilons) == ROUNDS
        k, m, z, delta = 100, 3, CASES[name]["dp_noise_multiplier"], CASES[name]["dp_delta"]  # C = 0.03
        for t, eps in enumerate(epsilons, 1):
            # The library with its default orders, called with this test's own events: m of K clients
            # sampled without replacement, replace-one, so the Gaussian's sensitivity is 2S: z / 2.
            event = dp_accounting.SampledWithoutReplacementDpEvent(k, m, dp_accounting.GaussianDpEvent(z / 2))
            accountant = dp_accounting.rdp.RdpAccountant(
                neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
            accountant.compose(dp_accounting.SelfComposedDpEvent(event, t))
            assert eps == pytest.approx(accountant.get_epsilon(delta), rel=1e-9), f"round {t}"
            # Independently, in numpy, from the paper: Theorem 27, which the library computes, strengthens
            # Theorem 9 only where its min picks a smaller term, and fedmpi's orders include 2..32, so ε can
            # only be smaller than this bound; at these settings the optimum is order 3, where both pick the
            # same terms, so they agree to rounding (measured: to 1e-15).
            bound = wbk19_epsilon(z, k, m, t, delta)
            assert eps <= bound * (1 + 1e-12) and eps == pytest.approx(bound, rel=1e-9), f"round {t}: {bound}"
        summary = json.loads((tmp_path / "run" / "summary.json").read_text())
        assert summary["dp"] == {"epsilon": epsilons[-1], "delta": delta, "noise_multiplier": z,
                                 "clip": CASES[name]["dp_clip"], "sampling": "fixed-size without replacement",
                                 "neighbouring": "replace-one",
                                 "accountant": f"dp-accounting {version('dp-accounting')} RDP"}


CLIENT_SGD = dict(client_momentum=0.9, weight_decay=0.01, lr_decay=0.7)  # torch.optim.SGD's options; η_t decays
ENGINE_PATHS = {  # model, flags, the start line's "workers train on cpu: ..."
    "fused-mlp": ("2nn", [], "stacked MLP"),
    "one-at-a-time": ("2nn", ["--stack-clients", "1"], "one client at a time"),
    "vmap": ("user_models:norm_net", ["--stack-clients", "4"], "stacked (torch.func.vmap), up to 4 clients"),
}


@pytest.mark.parametrize("path", ENGINE_PATHS)
def test_client_momentum_and_weight_decay_equal_torch_sgd_on_every_engine_path(path, federation, tmp_path):
    """Momentum, weight decay and a decaying η together, on each of the engine's steps (fedmpi/engine), against
    the sequential reference: 8 clients of unequal sizes a round (MNIST in lognormal shares, 21 to 2,741
    examples), 4 on each worker, E = 2. Stacked, a client's steps run out before its neighbours' in each
    epoch: it must stand still, momentum included, and carry its buffer into its next epoch. The vmap
    path runs a convolution with GroupNorm and LayerNorm (tests/user_models.py)."""
    model, engine_flags, trains_on = ENGINE_PATHS[path]
    fed = federation(unbalance=1.0)
    tests = str(Path(__file__).parent)  # user_models, before the checkout under test
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))}
    run = train(3, fed, tmp_path / "run", *BASE, "--model", model, "--fraction", "0.08", "--epochs", "2",
                "--rounds", "2", *engine_flags, *flags(CLIENT_SGD), env=env)
    assert f"workers train on cpu: {trains_on}" in run.stdout, run.stdout
    assert "momentum 0.9, weight decay 0.01" in run.stdout, run.stdout  # the start line names them
    expected = client_sgd_reference(fed, model, tuple(CLIENT_SGD.items()))
    difference = np.abs(final_weights(tmp_path / "run") - expected).max()
    print(f"{path}: largest weight difference {difference:.1e}")
    assert difference < 1e-9, f"{path}: {difference:.2e}"
    assert np.abs(expected - client_sgd_reference(fed, model, (("lr_decay", 0.7),))).max() > 1e-3  # they do act


@functools.lru_cache
def client_sgd_reference(fed_dir, model: str, options: tuple) -> np.ndarray:
    """The momentum test's reference, once per model and options: the fused-MLP and one-at-a-time paths share it."""
    return reference(fed_dir, dict(options), rounds=2, model=model, fraction=0.08, epochs=2)


def test_dp_without_noise_records_epsilon_as_null_with_a_note(federation, tmp_path):
    """Clipping only (z = 0) has no privacy: ε is infinite, which JSON cannot hold (Opacus's inf was written
    as Infinity): null in every record and in summary.json, which says why."""
    run = tmp_path / "run"
    train(0, federation(clients=10), run, "--fraction", "0.2", "--rounds", "1", "--dp-clip", "1", "--threads", "1")
    assert "Infinity" not in (run / "metrics.jsonl").read_text() + (run / "summary.json").read_text()
    assert [r["epsilon"] for r in read_metrics(run) if "epsilon" in r] == [None]
    dp = json.loads((run / "summary.json").read_text())["dp"]
    assert dp["epsilon"] is None and "no differential privacy" in dp["epsilon_note"], dp


def test_the_accountant_gives_a_finite_epsilon_wherever_config_allows_and_check_refuses_in_one_line():
    """Config bounds z to 0 or [1e-3, 1e6] because the accountant raised outside (ValueError from z = 1e9,
    OverflowError from 1e155, ZeroDivisionError below 1e-150): at the corners of what config allows it
    gives a finite ε without a warning, and check(), which set-up calls, turns a failure into one line."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning would reach a run's stderr
        for z in (MIN_DP_NOISE, MAX_DP):
            for k, m in ((1, 1), (10**6, 1), (10**6, 10**6 - 1)):
                for rounds, delta in ((1, 1e-300), (10**6, 1 - 1e-6)):
                    eps = privacy.epsilon(z, k, m, rounds, delta)
                    assert eps is not None and 0 <= eps < math.inf, (z, k, m, rounds, delta, eps)
    with pytest.raises(FedMPIError) as error:
        privacy.check(1e10, 100, 3, 10, 1e-5)
    assert "'dp_noise_multiplier'" in str(error.value) and "\n" not in str(error.value), error.value


def test_fedavg_through_the_algorithm_interface_is_unchanged(federation, tmp_path):
    """server_optimizer sgd with server_lr 1 is the paper's FedAvg (the reference with no options)."""
    fed = federation()
    train(3, fed, tmp_path / "run", *BASE, "--rounds", str(ROUNDS))
    assert np.abs(final_weights(tmp_path / "run") - fedavg_reference(fed)).max() < 1e-9


@pytest.mark.parametrize("options", [{**CASES["fedadam"], **CASES["dp-fedavg"]}, CASES["scaffold"]],
                         ids=["dp-fedadam", "scaffold"])
def test_kill_9_then_resume_on_another_rank_count_restores_the_algorithms_state(options, federation, tmp_path):
    """FedAdam's moments and DP's ledger (one run: DP-FedAdam), SCAFFOLD's control variates. Killed on 3 ranks,
    resumed on 2, the run ends in the weights and records of an uninterrupted one-process run."""
    fed = federation()
    run_flags = [*BASE, "--rounds", "12", "--checkpoint-every", "1", *flags(options)]
    full = tmp_path / "full"
    train(0, fed, full, *run_flags)
    out = tmp_path / "killed"
    proc = start_job(3, fed, out, *run_flags)
    wait_for_round(out, 3, proc)
    os.kill(rank_pids(str(out))[0], signal.SIGKILL)
    finish(proc, 60)
    assert 0 < len(read_metrics(out)) < 13  # rounds 0..12 when complete
    resumed = train(2, fed, out, *run_flags, "--resume")
    assert "resuming at round" in resumed.stdout
    np.testing.assert_array_equal(final_weights(out), final_weights(full))
    assert [{k: v for k, v in r.items() if k not in ("seconds", "time")} for r in read_metrics(out)] == \
        [{k: v for k, v in r.items() if k not in ("seconds", "time")} for r in read_metrics(full)]


@pytest.mark.parametrize("options, expected", [
    (["--algorithm", "fedprx"], ["'algorithm'", "did you mean 'fedprox'"]),
    (["--algorithm", "fedadam"], ["'algorithm'", "'fedadam' is FedAvg with --server-optimizer adam"]),
    (["--algorithm", "DP-FedAvg"], ["'algorithm'", "--dp-clip S --dp-noise-multiplier z"]),
    (["--server-optimizer", "adamw"], ["'server_optimizer'", "did you mean 'adam'"]),
    (["--algorithm", "fedprox", "--prox-mu", "-0.1"], ["'prox_mu'", ">= 0"]),
    (["--server-lr", "0"], ["'server_lr'", "> 0"]),
    (["--dp-clip", "-1"], ["'dp_clip'", "[0, 1e+06]"]),
    (["--dp-clip", "1e300", "--dp-noise-multiplier", "10"], ["'dp_clip'", "[0, 1e+06]"]),  # made inf weights
    (["--dp-clip", "1", "--dp-noise-multiplier", "-1"], ["'dp_noise_multiplier'", "[0.001, 1e+06]"]),
    # the accountant raised on these: ValueError (1e8, Opacus), OverflowError (1e160), ZeroDivisionError (1e-300)
    (["--dp-clip", "1", "--dp-noise-multiplier", "1e8"], ["'dp_noise_multiplier'", "[0.001, 1e+06]"]),
    (["--dp-clip", "1", "--dp-noise-multiplier", "1e160"], ["'dp_noise_multiplier'", "[0.001, 1e+06]"]),
    (["--dp-clip", "1", "--dp-noise-multiplier", "1e-300"], ["'dp_noise_multiplier'", "0 (clipping only)"]),
    (["--dp-noise-multiplier", "1"], ["'dp_clip'", "noise needs a clip"]),
    (["--algorithm", "scaffold", "--dp-clip", "1"], ["'dp_clip'", "SCAFFOLD", "DP"]),
    (["--prox-mu", "0.1"], ["'prox_mu'", "algorithm = \"fedprox\""]),
])
def test_bad_algorithm_settings_are_one_line_and_write_nothing(options, expected, federation, tmp_path):
    r = launch(0, ["--data", str(federation()), "--out", str(tmp_path / "run"), *options], timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    for part in expected:
        assert part in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()


def test_dp_without_its_accountant_installed_is_one_line_naming_the_extra(federation, tmp_path):
    """dp-accounting is an extra: a DP run where it is missing (shadowed here by a package that cannot be
    imported) stops in set-up, before anything is written."""
    shadow = tmp_path / "shadow" / "dp_accounting"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("No module named dp_accounting")\n')
    r = launch(0, ["--data", str(federation()), "--out", str(tmp_path / "run"), "--dp-clip", "1",
                   "--dp-noise-multiplier", "1"], env={"PYTHONPATH": str(shadow.parent)}, timeout=60)
    assert r.returncode == 2 and r.stderr.strip() == "fedmpi: error: DP (dp_clip > 0) needs the dp-accounting " \
        "package: pip install 'fedmpi[dp]'", r.stderr
    assert not (tmp_path / "run").exists()
