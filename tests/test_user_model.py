"""A user's own model, named "module:function": any nn.Module, with buffers, trains under MPI like the built-ins.

tests/user_models.py stands for the user's code; it is put on PYTHONPATH as a user would. BatchNorm's
running statistics are part of the averaged state, so the final model.pt holds them averaged, and a
3-rank run equals a 1-process run bit for bit (same threads per rank).
"""
import json
from pathlib import Path

import numpy as np
import torch

from helpers import comparable, final_weights, launch, train

USER_CODE = {"PYTHONPATH": str(Path(__file__).parent)}
FLAGS = ("--model", "user_models:bn_net", "--fraction", "0.1", "--epochs", "1", "--batch-size", "50",
         "--lr", "0.05", "--rounds", "3", "--seed", "2", "--threads", "1")



def test_a_user_model_with_batchnorm_trains_alike_on_3_ranks_and_on_one(federation, tmp_path):
    fed = federation()
    many = train(3, fed, tmp_path / "p3", *FLAGS, env=USER_CODE)
    train(0, fed, tmp_path / "p1", *FLAGS, env=USER_CODE)
    assert "user_models:bn_net" in many.stdout and "workers train on cpu: one client at a time" in many.stdout
    assert comparable(tmp_path / "p3") == comparable(tmp_path / "p1")
    a, b = (torch.load(tmp_path / run / "model.pt") for run in ("p3", "p1"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "features.1.running_mean" in a and not torch.equal(a["features.1.running_mean"], torch.zeros(8))
    accuracy = json.loads((tmp_path / "p3" / "summary.json").read_text())["final_test_accuracy"]
    assert accuracy > 0.8, accuracy  # it learns: 3 rounds of 10 clients


def test_a_model_with_dropout_is_trained_alike_on_any_rank_count(federation, tmp_path):
    """Dropout draws from (seed, round, client) alone, so which rank trains a client does not matter."""
    fed = federation()
    flags = [*FLAGS]
    flags[1] = "user_models:dropout_net"
    train(3, fed, tmp_path / "p3", *flags, env=USER_CODE)
    train(2, fed, tmp_path / "p2", *flags, env=USER_CODE)
    np.testing.assert_array_equal(final_weights(tmp_path / "p3"), final_weights(tmp_path / "p2"))


def test_resuming_with_a_changed_model_is_refused_in_one_line(federation, tmp_path):
    """The user's model function changed between a run and its --resume (same name in the config): other
    sizes, or the same sizes under other names, must not be read into the wrong tensors."""
    fed, out = federation(clients=10), tmp_path / "run"
    flags = ["--data", str(fed), "--out", str(out), "--model", "user_models:changing_net", "--rounds", "2",
             "--checkpoint-every", "1"]
    train(0, fed, out, *flags[4:], env={**USER_CODE, "HIDDEN": "50"}, timeout=120)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for change, expect in [({"HIDDEN": "60"}, "1.weight [50, 784] -> [60, 784]"),
                           ({"NAMES": "named"}, "1.weight [50, 784] -> absent")]:
        r = launch(0, [*flags, "--rounds", "3", "--resume"], env={**USER_CODE, **change}, timeout=120)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, r.stderr
        assert "made for another model" in lines[0] and expect in lines[0], lines[0]
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_parameter_that_is_a_strided_view_trains_like_its_contiguous_copy(federation, tmp_path):
    """A non-dense parameter kept its strides in the flat buffer and overlapped the next tensor there."""
    fed = federation(clients=10)
    for name in ("strided_head", "contiguous_head"):
        train(0, fed, tmp_path / name, "--model", f"user_models:{name}", "--rounds", "2", "--threads", "1",
              env=USER_CODE, timeout=120)
    a, b = (torch.load(tmp_path / name / "model.pt") for name in ("strided_head", "contiguous_head"))
    assert a.keys() == b.keys() == {"weight", "bias"}
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert comparable(tmp_path / "strided_head") == comparable(tmp_path / "contiguous_head")
