"""A client whose update is NaN/Inf aborts the job naming round and client, or, with
--on-bad-update skip, is left out of the average (weights renormalised) and recorded."""

from fedmpi.metrics import read_metrics
from helpers import client_hook, final_weights, launch
import numpy as np

from test_fedavg_reference import FLOAT64, TOL, seq_fedavg

POISON_CLIENT_3_IN_ROUND_1 = client_hook("(round_, k) == (1, 3)", 'delta[7] = float("nan")')
FLAGS = ["--fraction", "1.0", "--epochs", "1", "--batch-size", "200", "--lr", "0.05", "--rounds", "1",
         "--seed", "2", *FLOAT64]


def test_a_non_finite_update_aborts_naming_round_and_client(federation, tmp_path):
    r = launch(3, ["--data", str(federation(clients=10)), "--out", str(tmp_path / "run"), *FLAGS],
               script=POISON_CLIENT_3_IN_ROUND_1, timeout=120)
    assert r.returncode != 0
    assert "round 1: client 3 produced a non-finite update" in r.stderr
    assert "Traceback" not in r.stderr


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
