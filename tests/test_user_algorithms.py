"""A researcher's own algorithm, by import path, with no edit to fedmpi: FedNova and FedDyn from examples/.

Each equals a sequential float64 implementation written here from its paper (FedNova: Wang et al. 2020,
normalized averaging with each client's own number of local steps; FedDyn: Acar et al. 2021, Algorithm
1) after 3 rounds on clients of unequal sizes, to 1e-9; a run on 1 rank and on 3 gives the same weights
bit for bit; a kill -9 and a --resume on another rank count give the uninterrupted run's.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedmpi.data import Federation
from fedmpi.models import build_model
from helpers import assert_rank_independent_and_resumable, final_weights, launch, train

ROOT = Path(__file__).resolve().parents[1]
NOVA, DYN = "examples.algorithms.fednova:FedNova", "examples.algorithms.feddyn:FedDyn"
C, E, B, LR, ROUNDS, SEED, ALPHA = 0.075, 1, 50, 0.05, 3, 3, 0.1
BASE = ["--model", "2nn", "--fraction", str(C), "--epochs", str(E), "--batch-size", str(B), "--lr", str(LR),
        "--seed", str(SEED), "--threads", "1", "--eval-every", "100"]


@pytest.fixture(autouse=True)
def from_the_repository_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # where `python -m fedmpi` finds examples/, as a user runs it


@pytest.fixture
def fed(federation):
    return federation(clients=40, unbalance=1.0)  # 40 clients of 60 to 6,000 examples: their τ_k differ


def reference(fed_dir, algorithm: str, rho: float = 0.0) -> np.ndarray:
    """FedNova or FedDyn, sequentially, in float64 (the module docstring); `rho`: the clients' momentum
    (torch.optim.SGD's), which makes FedNova's τ_k the paper's ‖a_k‖₁ = Σ_{i=1..τ_k} (1 − ρ^i)/(1 − ρ)."""
    fed = Federation(fed_dir)
    model = build_model("2nn", fed.input_shape, fed.num_classes, SEED).double()
    params = list(model.parameters())
    w = torch.cat([p.detach().reshape(-1) for p in params])
    d, K = len(w), fed.num_clients
    m = max(int(round(C * K)), 1)
    mean, std = (torch.tensor(fed.manifest["normalize"][k], dtype=torch.float64).view(-1, 1, 1)
                 for k in ("mean", "std"))
    grad_state, h = torch.zeros(K, d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)  # FedDyn's g_k, h
    for r in range(1, ROUNDS + 1):
        chosen = np.sort(np.random.default_rng(np.random.SeedSequence([0, SEED, r])).choice(K, m, replace=False))
        deltas, sizes, steps = [], [], []
        for k in chosen:
            x, y = fed.load_client(int(k))
            x, y = (torch.from_numpy(x).double() / 255 - mean) / std, torch.from_numpy(y)
            torch.nn.utils.vector_to_parameters(w.clone(), params)
            state = np.random.SeedSequence([1, SEED, r, int(k)]).generate_state(1, np.uint64)[0]
            g = torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)
            tau, norm, buffer = 0, 0.0, None
            for _ in range(E):
                perm = torch.randperm(len(y), generator=g)
                for i in range(0, len(y), B):
                    idx = perm[i:i + B]
                    current = torch.cat([p.reshape(-1) for p in params])
                    loss = F.cross_entropy(model(x[idx]), y[idx])
                    if algorithm == DYN:  # L_k(θ) − ⟨g_k, θ⟩ + α/2 ‖θ − θ_{t−1}‖²
                        loss = loss - current @ grad_state[k] + ALPHA / 2 * (current - w).pow(2).sum()
                    grads = torch.cat([q.reshape(-1) for q in torch.autograd.grad(loss, params)])
                    buffer = grads if buffer is None else rho * buffer + grads
                    with torch.no_grad():
                        torch.nn.utils.vector_to_parameters(current - LR * buffer, params)
                    tau += 1
                    norm += sum(rho**j for j in range(tau))  # Σ_{j<τ} ρ^j = (1 − ρ^τ)/(1 − ρ); over τ steps: ‖a_k‖₁
            delta = torch.cat([p.detach().reshape(-1) for p in params]) - w
            deltas.append(delta)
            sizes.append(len(y))
            steps.append(norm)
            if algorithm == DYN:
                grad_state[k] = grad_state[k] - ALPHA * delta
        if algorithm == NOVA:  # Δ = τ_eff Σ p_k Δ_k / τ_k, p_k = n_k / Σ n_j, τ_eff = Σ p_k τ_k
            p = np.array(sizes) / sum(sizes)
            tau_eff = float(p @ np.array(steps))
            w = w + tau_eff * sum(pk * dk / tk for pk, dk, tk in zip(p, deltas, steps))
        else:  # h ← h − α/K Σ Δ_k;  θ_t = mean θ_k − h/α
            h = h - ALPHA / K * sum(deltas)
            w = w + sum(deltas) / len(deltas) - h / ALPHA
    assert len(set(steps)) > 1  # the clients' local steps differ, where FedNova differs from FedAvg
    return w.numpy()


@pytest.mark.parametrize("algorithm, rho", [(NOVA, 0.0), (NOVA, 0.5), (DYN, 0.0)],
                         ids=["fednova", "fednova-client-momentum", "feddyn"])
def test_a_user_algorithm_equals_its_sequential_reference(algorithm, rho, fed, tmp_path):
    extra = ["--algorithm-args", f"alpha = {ALPHA}"] if algorithm == DYN else []
    extra += ["--client-momentum", str(rho)] if rho else []
    train(3, fed, tmp_path / "run", *BASE, "--rounds", str(ROUNDS), "--precision", "float64",
          "--algorithm", algorithm, *extra)
    got, expected = final_weights(tmp_path / "run"), reference(fed, algorithm, rho)
    assert np.abs(got - expected).max() < 1e-9, np.abs(got - expected).max()
    train(0, fed, tmp_path / "fedavg", *BASE, "--rounds", str(ROUNDS), "--precision", "float64",
          *(["--client-momentum", str(rho)] if rho else []))  # one process: any rank count gives FedAvg's weights
    assert np.abs(got - final_weights(tmp_path / "fedavg")).max() > 1e-4  # it is not FedAvg


@pytest.mark.parametrize("algorithm", [NOVA, DYN], ids=["fednova", "feddyn"])
def test_a_user_algorithm_is_independent_of_the_rank_count_and_resumes_exactly(algorithm, fed, tmp_path):
    """1 rank and 3 ranks: the same weights bit for bit; kill -9 after round 2 (of 6), --resume on 2 ranks:
    the uninterrupted run's weights and records (FedDyn's g_k and h come back from the checkpoint)."""
    flags = [*BASE, "--rounds", "6", "--checkpoint-every", "1", "--algorithm", algorithm]
    assert_rank_independent_and_resumable(fed, tmp_path, flags, rounds=6, kill_after=2)


def test_algorithm_args_are_recorded_and_a_resume_with_others_is_refused(fed, tmp_path):
    """[algorithm_args] in a TOML config is the run's, in config.toml; --resume compares it like any field."""
    config = tmp_path / "run.toml"
    config.write_text(f'algorithm = "{DYN}"\nrounds = 1\n[algorithm_args]\nalpha = 0.5\n')
    out = tmp_path / "run"
    train(1, fed, out, "--config", str(config), *BASE, "--rounds", "1")
    assert re.search(r"\[algorithm_args\]\s+alpha = 0.5", (out / "config.toml").read_text())
    r = launch(0, ["--data", str(fed), "--out", str(out), "--config", str(config), *BASE, "--rounds", "2",
                   "--algorithm-args", "alpha = 0.25", "--resume"], timeout=60)
    assert r.returncode == 2 and "algorithm_args" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr


@pytest.mark.parametrize("options, expected", [
    (["--algorithm", DYN, "--algorithm-args", "alpa = 1"], ["'algorithm_args'", "'alpa'", "did you mean 'alpha'"]),
    (["--algorithm", DYN, "--algorithm-args", "alpha = -1"], ["'algorithm_args'", "alpha must be"]),
    (["--algorithm", DYN, "--algorithm-args", 'alpha = "big"'], ["'algorithm_args.alpha'", "expected float"]),
    (["--algorithm", DYN, "--algorithm-args", "alpha ="], ["'algorithm_args'", "TOML"]),
    (["--algorithm", NOVA, "--algorithm-args", "alpha = 1"], ["'algorithm_args'", "FedNova takes no settings"]),
    (["--algorithm", NOVA, "--dp-clip", "1"], ["'dp_clip'", "FedNova"]),
    (["--algorithm", "examples.algorithms.missing:Algo"], ["'algorithm'", "cannot import"]),
    (["--algorithm", "examples.algorithms.fednova:Missing"], ["'algorithm'", "Missing is missing"]),
    (["--algorithm", "examples.algorithms.feddyn:Args"], ["'algorithm'", "is not a subclass"]),
    (["--algorithm", "fednova"], ["'algorithm'", "unknown algorithm", '"package.module:Class"']),
])
def test_bad_algorithm_names_and_settings_are_one_line_and_write_nothing(options, expected, fed, tmp_path):
    r = launch(0, ["--data", str(fed), "--out", str(tmp_path / "run"), *options], timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    for part in expected:
        assert part in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()


def test_the_examples_are_outside_the_package_and_the_guide_shows_one_whole():
    found = subprocess.run(["grep", "-ril", "--exclude-dir=__pycache__", "fednova\\|feddyn", str(ROOT / "fedmpi")],
                           capture_output=True, text=True)
    assert found.stdout == "", found.stdout
    guide = (ROOT / "docs" / "extending.md").read_text()
    example = re.search(r"```python\n(.*?)```", guide, re.S)[1]
    assert example.strip() in (ROOT / "examples" / "algorithms" / "fednova.py").read_text()
    assert len(example.splitlines()) <= 80
