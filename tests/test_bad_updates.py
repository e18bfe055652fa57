"""A client whose update is NaN/Inf ends the run as diverged (exit 3, recorded, the last finite
weights kept), or, with --on-bad-update skip, is left out of the average (weights renormalised) and
recorded; so does a non-finite server update, named as the server's; a sweep records a diverged run
and does not run it again."""
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


# A user's model whose server step overflows while every client's update is finite, as DP noise of
# dp_clip 1e300 made it: logits = 1e36·(Wx + b) from W = b = 0, so a client's one SGD step (E = 1, B = all,
# lr 1) moves its weights by 1e36·mean((p − y)xᵀ), about 1e35, finite in float32 (3.4e38), and the
# server's step at server_lr 1e6 (the most allowed) by about 1e41, which float32 cannot hold.
LOUD_MODEL = """
import math
import torch

class Loud(torch.nn.Module):
    def __init__(self, inputs, classes):
        super().__init__()
        self.linear = torch.nn.Linear(inputs, classes)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, x):
        return 1e36 * self.linear(x.flatten(1))

def loud(input_shape, num_classes):
    return Loud(math.prod(input_shape), num_classes)
"""


def test_a_non_finite_server_update_ends_the_run_as_diverged_naming_the_server(federation, tmp_path):
    (tmp_path / "loud_model.py").write_text(LOUD_MODEL)
    run = tmp_path / "run"
    r = launch(3, ["--data", str(federation(clients=10)), "--out", str(run), "--model", "loud_model:loud",
                   "--fraction", "1.0", "--epochs", "1", "--batch-size", "0", "--lr", "1", "--server-lr", "1e6",
                   "--rounds", "2", "--threads", "1"], env={"PYTHONPATH": str(tmp_path)}, timeout=120)
    assert r.returncode == 3, f"{r.stdout}\n{r.stderr}"
    line = r.stderr.strip()
    assert line.startswith("fedmpi: error: round 1: the server's update is non-finite") and "\n" not in line, line
    assert "server_lr" in line and "produced" not in line  # says why, and no longer blames the clients
    summary = json.loads((run / "summary.json").read_text())
    assert summary["diverged"] == {"round": 1, "clients": [], "server": True} and summary["rounds"] == 0
    assert [rec["round"] for rec in read_metrics(run)] == [0]
    assert not final_weights(run).any()  # w_0 = 0, the last finite weights


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
