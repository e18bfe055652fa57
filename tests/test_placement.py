"""Balanced placement: every sampled client trained once, workers balanced by examples, mostly at home."""
import numpy as np

from fedmpi.fedavg import assign_to_workers, home_worker


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
