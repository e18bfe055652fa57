"""A client whose update is NaN/Inf ends the run as diverged (exit 3, recorded, the last finite
weights kept), or, with --on-bad-update skip, is left out of the average (weights renormalised) and
recorded; a sweep records a diverged run and does not run it again."""
import json

from fedmpi.metrics import read_metrics
from helpers import MPIEXEC, client_hook, final_weights, launch
import numpy as np

from test_fedavg_reference import FLOAT64, TOL, seq_fedavg

POISON_CLIENT_3_IN_ROUND_1 = client_hook("(round_, k) == (1, 3)", 'delta[7] = float("nan")')
FLAGS = ["--fraction", "1.0", "--epochs", "1", "--batch-size", "200", "--lr", "0.05", "--rounds", "1",
         "--seed", "2", *FLOAT64]


def test_a_non_finite_update_ends_the_run_as_diverged_keeping_the_last_finite_weights(federation, tmp_path):
    fed, run = federation(clients=10), tmp_path / "run"
    r = launch(3, ["--data", str(fed), "--out", str(run), *FLAGS, "--rounds", "3"],
               script=client_hook("(round_, k) == (2, 3)", 'delta[7] = float("nan")'), timeout=120)
    assert r.returncode == 3, f"{r.stdout}\n{r.stderr}"
    assert "fedmpi: error: round 2: client 3 produced a non-finite update" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "Abort" not in r.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["diverged"] == {"round": 2, "clients": [3]} and summary["rounds"] == 1
    assert [rec["round"] for rec in read_metrics(run)] == [0, 1]
    expected = seq_fedavg(fed, "2nn", 1.0, 1, 200, 0.05, rounds=1, seed=2)  # w_1: round 2 never applied
    assert np.abs(final_weights(run) - expected).max() < TOL


# The server's step in round 2 is infinite (as DP noise of dp_clip 1e300 made it) while every client's
# update is finite: a fault put into rank 0's server optimizer of a real job.
SERVER_OVERFLOWS_IN_ROUND_2 = """
import sys
import fedmpi.algorithms.optimizers as optimizers
original = optimizers.ServerOptimizer.step
calls = []
def step(self, weights, delta):
    calls.append(1)
    return original(self, weights, delta * float("inf") if len(calls) == 2 else delta)
optimizers.ServerOptimizer.step = step
from fedmpi.cli import main
sys.exit(main())
"""


def test_a_non_finite_server_update_ends_the_run_as_diverged_naming_the_server(federation, tmp_path):
    fed, run = federation(clients=10), tmp_path / "run"
    r = launch(3, ["--data", str(fed), "--out", str(run), *FLAGS, "--rounds", "3"],
               script=SERVER_OVERFLOWS_IN_ROUND_2, timeout=120)
    assert r.returncode == 3, f"{r.stdout}\n{r.stderr}"
    assert "fedmpi: error: round 2: the server's update is non-finite" in r.stderr, r.stderr
    assert "client" not in r.stderr.split("although")[0]  # it no longer blames the clients
    summary = json.loads((run / "summary.json").read_text())
    assert summary["diverged"] == {"round": 2, "clients": [], "server": True} and summary["rounds"] == 1
    expected = seq_fedavg(fed, "2nn", 1.0, 1, 200, 0.05, rounds=1, seed=2)  # w_1: round 2 never applied
    assert np.abs(final_weights(run) - expected).max() < TOL


def test_skip_drops_the_bad_client_and_renormalises(federation, tmp_path):
    fed = federation(clients=10)
    r = launch(3, ["--data", str(fed), "--out", str(tmp_path / "run"), *FLAGS, "--on-bad-update", "skip"],
               script=POISON_CLIENT_3_IN_ROUND_1, timeout=120)
    assert r.returncode == 0, r.stderr
    assert read_metrics(tmp_path / "run")[1]["skipped_clients"] == [3]
    expected = seq_fedavg(fed, "2nn", 1.0, 1, 200, 0.05, rounds=1, seed=2, exclude=(3,))
    assert np.abs(final_weights(tmp_path / "run") - expected).max() < TOL
    # Keeping client 3 would be far outside that tolerance, so the check can fail.
    assert np.abs(seq_fedavg(fed, "2nn", 1.0, 1, 200, 0.05, rounds=1, seed=2) - expected).max() > 1e-5


def test_a_sweep_records_a_diverged_run_goes_on_and_does_not_rerun_it(federation, tmp_path):
    from test_sweep import BASE, listing, sweep, write_sweep
    sweep_file = write_sweep(tmp_path / "s.toml", tmp_path / "out", {**BASE, "data": str(federation())},
                             grid={"lr": [1e6, 0.1]})  # 1e6: the first client's loss overflows
    r = sweep(sweep_file, "--launcher", f"{MPIEXEC} -n 2")
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    assert "sweep: lr1e+06 diverged (recorded in its summary.json); going on" in r.stdout, r.stdout
    assert "sweep: all 2 run(s) complete (1 diverged)" in r.stdout
    assert "fedmpi: error: round 1: client" in r.stderr
    assert [row[:2] for row in listing(sweep_file)] == [["lr1e+06", "diverged"], ["lr0.1", "complete"]]
    again = sweep(sweep_file, "--launcher", f"{MPIEXEC} -n 2")
    assert again.returncode == 0 and "sweep: [1/2] lr1e+06: diverged, skipped" in again.stdout, again.stdout
