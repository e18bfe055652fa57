"""Synthetic(α, β) of Li et al. ("Federated Optimization in Heterogeneous Networks", MLSys 2020): any number
of clients, each with its own model (skew α) and its own features (skew β).

Client k draws u_k ~ N(0, α) and B_k ~ N(0, β); its model W_k ~ N(u_k, 1)
(60 x 10), b_k ~ N(u_k, 1); its feature mean v_k ~ N(B_k, 1) (60 values);
its examples x ~ N(v_k, Σ) with Σ diagonal, Σ_jj = j^-1.2, and labels
y = argmax(W_kᵀ x + b_k), as in the authors' generator. Sizes follow the
paper's power law, n_k = floor(lognormal(μ, σ)) + minimum: the paper's μ = 4,
σ = 2, minimum 50 make 450 examples per client on average, 100 GB at K =
10^6, so the defaults here are μ = 1, σ = 2, minimum 10, at most 1,000 (about
30 on average: 7 GB at K = 10^6; `--size-mu 4 --min-size 50 --max-size 0`
gives the paper's law). Everything of client k is drawn from
SeedSequence([seed, k]), so a client does not depend on how many others are
made or in what order: clients are generated and written a file at a time,
in bounded memory. The test set: 10,000 examples, each of a client drawn
uniformly, from that client's distribution (SeedSequence([seed, K, 1])).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedmpi.errors import FedMPIError

DIMENSION, NUM_CLASSES, TEST_EXAMPLES = 60, 10, 10_000
COVARIANCE = np.arange(1, DIMENSION + 1, dtype=np.float64) ** -1.2  # the diagonal of Σ
# β: feature means reach about 5β over 10^6 clients; up to 1e3 (the paper: 0 to 1), float32 features
# keep each example's own spread (std down to 60^-0.6 = 0.086) to 1 %; 1e300 overflows them to -inf.
MAX_FEATURE_SKEW = 1e3
MAX_CLIENT_SIZE = 2**31 - 1  # examples; far beyond any disk at K clients, and their sum fits int64


@dataclass
class Synthetic:
    """What data_prep writes, generated a client at a time (the writer streams `clients()`)."""

    num_clients: int
    model_skew: float
    feature_skew: float
    seed: int
    sizes: np.ndarray
    kind: str = "features"
    num_classes: int = NUM_CLASSES
    natural_names: None = None
    note: str = ""
    fields: dict = field(default_factory=lambda: {"feature_dim": DIMENSION})

    @property
    def source(self) -> dict:
        return {"kind": "synthetic", "model_skew": self.model_skew, "feature_skew": self.feature_skew}

    def _client(self, k: int):
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, k]))
        u, b_mean = rng.normal(0, self.model_skew), rng.normal(0, self.feature_skew)
        w, b = rng.normal(u, 1, (DIMENSION, NUM_CLASSES)), rng.normal(u, 1, NUM_CLASSES)
        v = rng.normal(b_mean, 1, DIMENSION)
        return rng, w, b, v

    def examples(self, k: int, n: int, rng=None):
        """n examples of client k: float32 features [n, 60], int64 labels [n]."""
        own, w, b, v = self._client(k)
        rng = rng or own
        x = v + rng.standard_normal((n, DIMENSION)) * np.sqrt(COVARIANCE)
        return x.astype(np.float32), np.argmax(x @ w + b, axis=1).astype(np.int64)

    def clients(self):
        for k, n in enumerate(self.sizes):
            yield self.examples(k, int(n))

    @property
    def test(self):
        """TEST_EXAMPLES examples, each of a uniformly drawn client."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.num_clients, 1]))
        who = np.sort(rng.integers(0, self.num_clients, TEST_EXAMPLES))
        parts = [self.examples(int(k), int(c), rng) for k, c in zip(*np.unique(who, return_counts=True))]
        return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])


def make(num_clients: int, model_skew: float, feature_skew: float, seed: int, size_mu: float = 1.0,
         size_sigma: float = 2.0, min_size: int = 10, max_size: int = 1000) -> Synthetic:
    for name, value in (("--model-skew", model_skew), ("--feature-skew", feature_skew),
                        ("--size-sigma", size_sigma)):
        if not (np.isfinite(value) and value >= 0):
            raise FedMPIError(f"{name} {value}: must be a finite number >= 0")
    if feature_skew > MAX_FEATURE_SKEW:
        raise FedMPIError(f"--feature-skew {feature_skew:g}: must be at most {MAX_FEATURE_SKEW:g}; beyond it the "
                          "float32 features lose each example's own spread (the paper uses 0 to 1)")
    if not np.isfinite(size_mu):
        raise FedMPIError(f"--size-mu {size_mu}: must be a finite number")
    if num_clients < 1:
        raise FedMPIError(f"--clients {num_clients}: need at least 1 client")
    if min_size < 1 or (max_size and max_size < min_size):
        raise FedMPIError(f"--min-size {min_size} / --max-size {max_size}: need 1 <= min <= max (max 0: no cap)")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2**32]))  # the sizes: apart from every client
    draws = np.floor(rng.lognormal(size_mu, size_sigma, num_clients)) + min_size  # float: may be inf, capped next
    if max_size:
        np.minimum(draws, max_size, out=draws)
    if draws.max() > MAX_CLIENT_SIZE:
        raise FedMPIError(f"--size-mu {size_mu:g} / --size-sigma {size_sigma:g}: a client would get {draws.max():.3g} "
                          f"examples, more than {MAX_CLIENT_SIZE:,}; lower them, or cap sizes with --max-size")
    return Synthetic(num_clients, model_skew, feature_skew, seed, draws.astype(np.int64))

