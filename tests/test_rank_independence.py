"""Results do not depend on how many ranks share the clients (docs/architecture.md).

With the same threads per rank, the final weights are bitwise equal for
P = 1 (no launcher), 2, 3, 4, with ranks beyond the cores idle (the default)
or all of them hosting clients (--workers-per-node), and for one client per
worker and round (m = 5, P = 6).
"""
import math
import os

import numpy as np
import pytest

from helpers import final_weights, launch, train

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
    """The paper's picture, `mpirun -n m+1`: 5 workers, each training one of the round's 5 clients (K = 10,
    C = 0.5; the clients of a round are dealt evenly over the workers). B = 50: the layout is what counts."""
    fed = federation(clients=10)
    flags = [*FLAGS]
    flags[flags.index("--fraction") + 1] = "0.5"
    flags[flags.index("--batch-size") + 1] = "50"
    single = train(0, fed, tmp_path / "p1", *flags)
    many = train(6, fed, tmp_path / "p6", *flags, "--workers-per-node", "5")
    assert "6 rank(s), 5 worker(s)" in many.stdout
    np.testing.assert_array_equal(final_weights(tmp_path / "p6"), final_weights(tmp_path / "p1"))
    assert single.returncode == 0


def test_float64_results_do_not_depend_on_rank_count_either(federation, tmp_path):
    """float64 updates are not exact in a float64 sum: the reduction's double-double sums (fedavg.RoundSums)
    make their grouping over the ranks invisible."""
    flags = [*FLAGS, "--precision", "float64"]
    train(0, federation(), tmp_path / "p1", *flags)
    train(3, federation(), tmp_path / "p3", *flags)
    np.testing.assert_array_equal(final_weights(tmp_path / "p3"), final_weights(tmp_path / "p1"))


REDUCE_ADDENDS = """
import sys
import numpy as np
from fedmpi.comm import Comm
from fedmpi.fedavg import two_sum_into
comm = Comm()
addends = np.load(sys.argv[1])  # (clients, values)
workers = list(range(1, comm.size)) or [0]
pairs = np.zeros((addends.shape[1], 2))
for k in range(len(addends)):
    if workers[k % len(workers)] == comm.rank:  # this rank's clients, round robin: another grouping per P
        two_sum_into(pairs[:, 0], pairs[:, 1], addends[k])
comm.reduce_sum(pairs)
if comm.rank == 0:
    np.save(sys.argv[2], pairs[:, 0] + pairs[:, 1])
"""


def test_the_reduction_is_the_exact_sum_rounded_once_for_any_rank_count(tmp_path):
    """The double-double sums under the round's reduction (fedavg.two_sum_into on each rank, comm.DD_SUM
    across ranks), against math.fsum (the correctly rounded sum) of addends chosen to make plain float64
    sums depend on their order: magnitudes over 16 decades, and pairs that cancel."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 500)) * 10.0 ** rng.uniform(-8, 8, size=(24, 500))
    addends = np.concatenate([x, -x[:8] * (1 + 2.0 ** -40)])  # cancellation: the small remainders count
    np.save(tmp_path / "addends.npy", addends)
    exact = np.array([math.fsum(column) for column in addends.T])
    assert not np.array_equal(addends.sum(axis=0), exact)  # a plain float64 sum would fail this test
    for ranks in (1, 2, 3, 5):
        out = tmp_path / f"sum{ranks}.npy"
        r = launch(ranks, [str(tmp_path / "addends.npy"), str(out)], script=REDUCE_ADDENDS, timeout=60)
        assert r.returncode == 0, r.stderr
        np.testing.assert_array_equal(np.load(out), exact, err_msg=f"{ranks} ranks")
