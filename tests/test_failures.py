"""A failing rank ends the whole job quickly with a message naming it; user mistakes give one line."""
import json
import shutil

import pytest

from helpers import launch

RAISE_ON_RANK_2 = """
import sys
from mpi4py import MPI
import fedmpi.worker
original = fedmpi.worker.Worker._train
def failing(self, round_, k, slot, sums):
    if MPI.COMM_WORLD.rank == 2 and round_ == 2:
        raise RuntimeError("injected failure in client training")
    return original(self, round_, k, slot, sums)
fedmpi.worker.Worker._train = failing
from fedmpi.cli import main
sys.exit(main())
"""


def test_a_rank_that_raises_mid_round_ends_the_job_within_30_s(federation, tmp_path):
    r = launch(4, ["--data", str(federation()), "--out", str(tmp_path / "run"), "--rounds", "50",
                   "--fraction", "1.0"], script=RAISE_ON_RANK_2, timeout=120)
    assert r.returncode != 0
    assert r.seconds < 30, f"took {r.seconds:.1f} s"
    assert "rank 2" in r.stderr and "injected failure in client training" in r.stderr


def mistakes(fed, tmp):
    broken = tmp / "broken"
    shutil.copytree(fed, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["clients"][3]["n"] = 599
    (broken / "manifest.json").write_text(json.dumps(manifest))
    return {
        "missing federation": (["--data", str(tmp / "nope")], "folder not found"),
        "unknown model": (["--data", str(fed), "--model", "resnet"], "unknown model 'resnet'"),
        "fraction above 1": (["--data", str(fed), "--fraction", "1.5"], "'fraction'"),
        "fraction negative": (["--data", str(fed), "--fraction", "-0.1"], "'fraction'"),
        "batch size negative": (["--data", str(fed), "--batch-size", "-5"], "'batch_size'"),
        "batch size not a number": (["--data", str(fed), "--batch-size", "ten"], "'batch_size'"),
        "manifest disagrees with a shard": (["--data", str(broken)], "client-00003.h5"),
    }


@pytest.mark.parametrize("case", ["missing federation", "unknown model", "fraction above 1", "fraction negative",
                                  "batch size negative", "batch size not a number",
                                  "manifest disagrees with a shard"])
def test_user_mistakes_give_one_clear_line(case, federation, tmp_path):
    args, expected = mistakes(federation(clients=10), tmp_path)[case]
    r = launch(3, [*args, "--out", str(tmp_path / "run"), "--rounds", "1"], timeout=120)
    assert r.returncode != 0
    assert expected in r.stderr
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, r.stderr
