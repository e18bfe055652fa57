"""Balanced placement: every worker trains at most ceil(m/W) clients, mostly at home (k mod W)."""
import numpy as np

from fedmpi.fedavg import assign_to_workers


def test_every_sampled_client_is_trained_once_and_no_worker_gets_more_than_its_share():
    rng = np.random.default_rng(0)
    for _ in range(500):
        workers = int(rng.integers(1, 12))
        m = int(rng.integers(1, 30))
        sampled = np.sort(rng.choice(100, m, replace=False))
        owners = assign_to_workers(sampled, workers)
        assert owners.shape == (m,) and owners.min() >= 0 and owners.max() < workers
        assert np.bincount(owners, minlength=workers).max() == -(-m // workers)


def test_clients_stay_home_when_that_is_balanced():
    sampled = np.array([0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(assign_to_workers(sampled, 3), sampled % 3)
    # 7 of the clients are at home on worker 0 (k even); 2 of them move to worker 1.
    sampled = np.array([0, 2, 4, 6, 8, 10, 12, 1, 3, 5])
    owners = assign_to_workers(sampled, 2)
    assert list(owners[:5]) == [0] * 5 and list(owners[5:7]) == [1, 1] and list(owners[7:]) == [1, 1, 1]
