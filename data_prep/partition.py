"""How the training indices are split among K clients (McMahan et al. 2017, section 3).

Pure numpy: each function takes the generator it draws from and returns K
int64 index arrays that together hold every index exactly once. The order of
draws is part of the format (docs/federation-format.md), so the same seed gives
the same federation everywhere. `holdout` then splits one client's examples
into its training part and its own test set (data_prep --client-test-fraction).
"""

import math

import numpy as np

from fedmpi.errors import FedMPIError

MAX_UNBALANCE = 10.0


def _check_clients(n: int, num_clients: int) -> None:
    if num_clients < 1:
        raise FedMPIError(f"--clients {num_clients}: need at least 1 client")
    if num_clients > n:
        raise FedMPIError(f"--clients {num_clients}: more clients than the {n} training examples")


def iid(n: int, num_clients: int, rng: np.random.Generator, unbalance: float = 0.0) -> list[np.ndarray]:
    """A random permutation cut into K parts: equal (sizes differ by at most 1 when K does not
    divide n), or with `unbalance` S > 0, sizes proportional to lognormal(0, S) draws, each >= 1."""
    _check_clients(n, num_clients)
    if not 0 <= unbalance <= MAX_UNBALANCE:  # also refuses nan
        raise FedMPIError(f"--unbalance {unbalance}: must lie in 0..{MAX_UNBALANCE} (the sigma of a lognormal; "
                          f"at {MAX_UNBALANCE} client sizes already span 20 orders of magnitude)")
    perm = rng.permutation(n)
    if unbalance == 0:
        return np.array_split(perm, num_clients)
    sizes = _sizes_from_weights(rng.lognormal(0.0, unbalance, num_clients), n)
    return np.split(perm, np.cumsum(sizes)[:-1])


def _sizes_from_weights(weights: np.ndarray, n: int) -> np.ndarray:
    """Integer sizes >= 1 summing to n, proportional to `weights` (largest remainder rounding)."""
    quota = (n - len(weights)) * (weights / weights.max()) / (weights / weights.max()).sum()  # no overflow
    sizes = np.floor(quota).astype(np.int64)
    short = n - len(weights) - sizes.sum()
    sizes[np.argsort(sizes - quota, kind="stable")[:short]] += 1
    if sizes.min() < 0 or sizes.sum() != n - len(weights):
        raise AssertionError(f"client sizes do not add up to {n}")  # a bug, never a user's mistake
    return sizes + 1


def shards(labels: np.ndarray, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The paper's pathological non-IID split: sort by label, cut 2K equal shards, two per client."""
    n = len(labels)
    _check_clients(n, num_clients)
    if n % (2 * num_clients):
        raise FedMPIError(
            f"--partition shards: {n} examples do not split into 2 x {num_clients} equal shards; "
            f"choose --clients so that 2K divides {n}"
        )
    pieces = np.argsort(labels, kind="stable").reshape(2 * num_clients, -1)
    perm = rng.permutation(2 * num_clients)
    return [np.concatenate([pieces[perm[2 * k]], pieces[perm[2 * k + 1]]]) for k in range(num_clients)]


def dirichlet(labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Label skew: each class, in increasing label order, is permuted and then split among the
    K clients with proportions drawn from Dirichlet(alpha * 1_K)."""
    _check_clients(len(labels), num_clients)
    if not alpha > 0:
        raise FedMPIError(f"--alpha {alpha}: must be > 0")
    parts = [[] for _ in range(num_clients)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        p = rng.dirichlet(np.full(num_clients, alpha))
        cuts = (np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
        for part, piece in zip(parts, np.split(idx, cuts)):
            part.append(piece)
    clients = [np.concatenate(part) for part in parts]
    empty = [k for k, c in enumerate(clients) if len(c) == 0]
    if empty:
        raise FedMPIError(
            f"--partition dirichlet --alpha {alpha}: {len(empty)} client(s) got no examples "
            f"(first: client {empty[0]}); raise --alpha or lower --clients"
        )
    return clients


HOLDOUT = 2**32 + 1  # SeedSequence([seed, HOLDOUT, k]): client k's test examples (apart from synthetic's draws)


def test_count(n: int, fraction: float) -> int:
    """How many of a client's n examples are its own test set: floor(F·n), at least one kept for training.
    F·n is rounded to 9 decimals first, so that 0.29·100 (28.999999999999996 in binary) is 29."""
    return min(math.floor(round(fraction * n, 9)), n - 1)


def holdout(n: int, fraction: float, seed: int, client: int) -> tuple[np.ndarray, np.ndarray]:
    """(training, test) positions among client k's n examples, each in increasing order: test_count(n, F)
    positions drawn without replacement from SeedSequence([seed, HOLDOUT, k]), so a client's split depends
    on the seed and on it alone (not on K, the partition or the other clients)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, HOLDOUT, client]))
    test = np.sort(rng.choice(n, test_count(n, fraction), replace=False))
    keep = np.ones(n, dtype=bool)
    keep[test] = False
    return np.flatnonzero(keep), test
