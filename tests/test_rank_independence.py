"""Results do not depend on how many ranks share the clients (docs/architecture.md).

With the same threads per rank, the final weights are bitwise equal for
P = 1 (no launcher), 2, 3, 4, with ranks beyond the cores idle (the default)
or all of them hosting clients (--workers-per-node), and for one client per
worker (K = 10, P = 11).
"""
import os

import numpy as np
import pytest

from helpers import final_weights, train

FLAGS = ("--model", "2nn", "--fraction", "0.1", "--epochs", "1", "--batch-size", "10", "--lr", "0.1",
         "--rounds", "3", "--seed", "1", "--threads", "1")


@pytest.fixture(scope="module")
def single_rank_weights(federation, tmp_path_factory):
    out = tmp_path_factory.mktemp("p1") / "run"
    train(0, federation(), out, *FLAGS)
    return final_weights(out)


@pytest.mark.parametrize("ranks,per_node", [(2, 0), (3, 0), (4, 0), (4, 3)])
def test_final_weights_do_not_depend_on_rank_count(ranks, per_node, single_rank_weights, federation, tmp_path):
    r = train(ranks, federation(), tmp_path / "run", *FLAGS, "--workers-per-node", str(per_node))
    workers = min(ranks - 1, per_node or len(os.sched_getaffinity(0)))
    idle = ranks - 1 - workers
    assert f"{ranks} rank(s), {workers} worker(s){f' + {idle} idle' if idle else ','}" in r.stdout
    np.testing.assert_array_equal(final_weights(tmp_path / "run"), single_rank_weights)


def test_one_client_per_worker_matches_single_rank(federation, tmp_path):
    """The paper's picture, `mpirun -n K+1`: each of the 10 workers hosts exactly one client."""
    fed = federation(clients=10)
    flags = [*FLAGS]
    flags[flags.index("--fraction") + 1] = "0.5"
    single = train(0, fed, tmp_path / "p1", *flags)
    many = train(11, fed, tmp_path / "p11", *flags, "--workers-per-node", "10")
    assert "11 rank(s), 10 worker(s)" in many.stdout
    np.testing.assert_array_equal(final_weights(tmp_path / "p11"), final_weights(tmp_path / "p1"))
    assert single.returncode == 0


def test_float64_results_do_not_depend_on_rank_count_either(federation, tmp_path):
    """float64 updates are not exact in a float64 sum: the reduction's double-double sums (fedavg.RoundSums)
    make their grouping over the ranks invisible."""
    flags = [*FLAGS, "--precision", "float64"]
    train(0, federation(), tmp_path / "p1", *flags)
    train(3, federation(), tmp_path / "p3", *flags)
    np.testing.assert_array_equal(final_weights(tmp_path / "p3"), final_weights(tmp_path / "p1"))
