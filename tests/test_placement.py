"""Balanced placement: every sampled client trained once, workers balanced by examples, mostly at home;
and ranks placed per node, on two emulated nodes."""
import numpy as np

from fedmpi.fedavg import assign_to_workers, home_worker
from helpers import MPIEXEC, comparable, final_weights, launch_with, train


def test_every_sampled_client_is_trained_once_and_equal_clients_are_dealt_evenly():
    rng = np.random.default_rng(0)
    for _ in range(500):
        workers = int(rng.integers(1, 12))
        m = int(rng.integers(1, 30))
        sampled = np.sort(rng.choice(100, m, replace=False))
        owners = assign_to_workers(sampled, np.full(m, 600), workers, 100)
        assert owners.shape == (m,) and owners.min() >= 0 and owners.max() < workers
        assert np.bincount(owners, minlength=workers).max() == -(-m // workers)


def test_unequal_clients_are_balanced_by_examples():
    rng = np.random.default_rng(1)
    for _ in range(200):
        workers = int(rng.integers(2, 8))
        m = int(rng.integers(workers, 60))
        sampled = np.sort(rng.choice(1000, m, replace=False))
        sizes = rng.integers(10, 1000, m)
        owners = assign_to_workers(sampled, sizes, workers, 1000)
        load = np.bincount(owners, weights=sizes, minlength=workers)
        # no worker above its share by more than one client, where the greedy fills the smallest first
        assert load.max() <= sizes.sum() / workers + sizes.max()


def test_clients_stay_home_when_that_is_balanced():
    assert [home_worker(k, 3, 9) for k in range(9)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    sampled = np.array([0, 1, 3, 4, 6, 7])
    np.testing.assert_array_equal(assign_to_workers(sampled, np.full(6, 100), 3, 9), [0, 0, 1, 1, 2, 2])
    # 7 clients of 10 are at home on worker 0 (k < 50): 2 of them move to worker 1.
    sampled = np.array([0, 2, 4, 6, 8, 10, 12, 51, 53, 55])
    owners = assign_to_workers(sampled, np.full(10, 600), 2, 100)
    assert list(owners[:5]) == [0] * 5 and list(owners[5:7]) == [1, 1] and list(owners[7:]) == [1, 1, 1]


# Two nodes on one machine: pip's MPICH (hydra) starts the ranks of each host with its fork launcher (the
# names need not resolve) and gives each host its own shared-memory communicator (docs/scaling.md).
TWO_NODES = [MPIEXEC, "-launcher", "fork", "-hosts", "nodeA:2,nodeB:2", "-n", "4"]
PLACEMENT = """
import os, sys
from pathlib import Path
import fedmpi.job
from fedmpi.cli import main
prepare = fedmpi.job.prepare
def report(cfg, fed, comm, *args):  # fedmpi's own placement, written by every rank into a file of its own
    role = "server" if comm.is_server else "worker" if comm.is_worker else "idle"
    Path(os.environ["PLACEMENT_DIR"], str(comm.rank)).write_text(
        f"node {comm.layout[comm.rank][0]} local rank {comm.local_rank} {role}")
    return prepare(cfg, fed, comm, *args)
fedmpi.job.prepare = report
sys.exit(main(exiting=True))
"""
FLAGS = ["--rounds", "3", "--fraction", "0.3", "--batch-size", "50", "--threads", "1", "--seed", "5"]


def test_two_emulated_nodes_place_workers_idle_ranks_and_local_ranks_per_node(federation, tmp_path):
    """--workers-per-node 1 counts per node: one worker on each of the two nodes, and node B's second rank
    idle. The local rank (a GPU's index is local rank mod the node's GPUs, job.choose_device) restarts at
    0 on node B. The job ends in the weights and metrics of one rank."""
    fed = federation(clients=10)
    train(1, fed, tmp_path / "one", *FLAGS)
    r = launch_with(TWO_NODES, ["--data", str(fed), "--out", str(tmp_path / "two"), *FLAGS, "--workers-per-node", "1"],
                    script=PLACEMENT, env={"PLACEMENT_DIR": str(tmp_path)}, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    placement = {rank: (tmp_path / str(rank)).read_text() for rank in range(4)}
    assert placement == {0: "node 0 local rank 0 server", 1: "node 0 local rank 1 worker",  # node A: ranks 0, 1
                         2: "node 2 local rank 0 worker", 3: "node 2 local rank 1 idle"}  # node B: ranks 2, 3
    assert "4 rank(s), 2 worker(s) + 1 idle" in r.stdout
    np.testing.assert_array_equal(final_weights(tmp_path / "two"), final_weights(tmp_path / "one"))
    assert comparable(tmp_path / "two") == comparable(tmp_path / "one")
