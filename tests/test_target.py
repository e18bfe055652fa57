"""The `target_accuracy` run field: a run stops at the first evaluated round whose test accuracy is at or
above the target, keeps that round's weights, and a --resume of it stops again at once.

The target is taken from a first run without a target (its accuracy at round 3), so the round where the
run must stop is known beforehand: the first round of that run at or above it. The stopped run's model
is compared bit for bit with a run without target and --rounds set to that round. A target outside
[0, 1] is a config error like any other.
"""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from fedmpi.metrics import read_metrics
from helpers import final_weights, launch, train

FLAGS = ("--model", "2nn", "--fraction", "0.02", "--epochs", "1", "--batch-size", "50", "--lr", "0.1",
         "--seed", "1", "--threads", "1")
ROUNDS = 4


def accuracies(run_dir) -> dict[int, float]:
    return {r["round"]: r["test_accuracy"] for r in read_metrics(run_dir)}


@pytest.fixture(scope="module")
def stopped(federation, tmp_path_factory):
    d = tmp_path_factory.mktemp("target")
    fed = federation()
    train(2, fed, d / "free", *FLAGS, "--rounds", str(ROUNDS))
    free = accuracies(d / "free")
    target = free[3]
    expected = next(t for t in sorted(free) if free[t] >= target)  # the first round at or above it
    assert 1 <= expected <= 3 < ROUNDS
    r = train(2, fed, d / "stopped", *FLAGS, "--rounds", str(ROUNDS), "--target-accuracy", repr(target))
    train(2, fed, d / "short", *FLAGS, "--rounds", str(expected))
    return {"fed": fed, "free": free, "target": target, "round": expected, "run": d / "stopped",
            "stdout": r.stdout, "short": d / "short"}


def test_run_stops_at_the_first_round_at_or_above_the_target(stopped):
    k, target, run = stopped["round"], stopped["target"], stopped["run"]
    got = accuracies(run)
    assert list(got) == list(range(k + 1))                       # metrics.jsonl ends at round k
    assert all(got[t] < target for t in range(k)) and got[k] >= target
    assert got == {t: stopped["free"][t] for t in range(k + 1)}  # the same rounds as the free run
    summary = json.loads((run / "summary.json").read_text())
    assert summary["target_round"] == k and summary["rounds"] == k
    assert summary["target_accuracy"] == target and summary["final_test_accuracy"] == got[k]
    assert f"round {k} reached the target accuracy" in stopped["stdout"]


def test_stopped_model_is_the_model_of_a_run_of_that_many_rounds(stopped):
    np.testing.assert_array_equal(final_weights(stopped["run"]), final_weights(stopped["short"]))


def test_resume_of_a_stopped_run_stops_again_at_once(stopped):
    run, k = stopped["run"], stopped["round"]
    before = read_metrics(run)
    weights = final_weights(run)
    r = train(2, stopped["fed"], run, *FLAGS, "--rounds", str(ROUNDS), "--target-accuracy",
              repr(stopped["target"]), "--resume")
    assert f"resuming at round {k}" in r.stdout and f"round {k} reached the target accuracy" in r.stdout
    assert not re.search(rf"^round {k + 1}/", r.stdout, re.M), r.stdout
    after = read_metrics(run)
    assert [x["round"] for x in after] == list(range(k + 1))
    assert after == before  # round k's record too, with its clients, train loss and times
    assert json.loads((run / "summary.json").read_text())["target_round"] == k
    np.testing.assert_array_equal(final_weights(run), weights)
    np.testing.assert_array_equal(final_weights(run), final_weights(stopped["short"]))


def test_a_target_an_earlier_round_reached_cannot_be_set_on_resume(stopped, tmp_path):
    """The run went on past that round and its weights are gone: resuming would report the wrong round."""
    run = tmp_path / "run"
    shutil.copytree(stopped["run"].parent / "free", run)  # finished, without a target
    target = stopped["free"][1]
    r = launch(2, ["--data", str(stopped["fed"]), "--out", str(run), *FLAGS, "--rounds", str(ROUNDS),
                   "--target-accuracy", repr(target), "--resume"], timeout=60)
    assert r.returncode == 2 and "round 1 already reached target_accuracy" in r.stderr, r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr


@pytest.mark.parametrize("ranks, value", [(0, "1.5"), (0, "-0.1"), (0, "nan"), (2, "2")])
def test_target_outside_0_1_is_a_config_error(ranks, value, federation, tmp_path):
    r = launch(ranks, ["--data", str(federation()), "--out", str(tmp_path / "run"), *FLAGS, "--rounds", "2",
                       "--target-accuracy", value], timeout=60)
    lines = r.stderr.splitlines()
    assert r.returncode == 2 and len(lines) == 1, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert lines[0].startswith("fedmpi: error:") and "'target_accuracy'" in lines[0], lines[0]
    assert "Traceback" not in r.stderr and not (tmp_path / "run").exists()


def test_target_first_reached_in_the_last_round_is_recorded(stopped, tmp_path):
    k = stopped["round"]
    r = train(2, stopped["fed"], tmp_path / "run", *FLAGS, "--rounds", str(k), "--target-accuracy",
              repr(stopped["target"]))
    assert accuracies(tmp_path / "run")[k] >= stopped["target"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["target_round"] == k, r.stdout
