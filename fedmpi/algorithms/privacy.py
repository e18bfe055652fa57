"""DP-FedAvg (McMahan et al., "Learning Differentially Private Recurrent Language Models", ICLR 2018).

Each sampled client's update is clipped to L2 norm S (`dp_clip`) on its
worker; the server adds Gaussian noise of standard deviation z·S
(`dp_noise_multiplier` z) to their sum and divides by m, the number of
clients sampled per round (the paper's fixed-denominator estimator with
equal client weights, whose sensitivity to one client is S). The noise is
drawn on rank 0 from a generator seeded by (seed, round) alone, so a resumed
run draws the same noise, value i going to the i-th value in state_dict order
(each tensor row-major), whatever the memory layout of the flat weights.

ε after each round comes from Opacus's RDP accountant for the subsampled
Gaussian mechanism, with sampling rate q = m/K per round and noise
multiplier z, at δ = `dp_delta`. The accountant assumes Poisson sampling;
fedmpi samples exactly m clients (as the paper's experiments do), which the
accounting treats as Poisson sampling with q = m/K, as is customary.
"""
from __future__ import annotations

import numpy as np

NOISE = 2  # SeedSequence prefix: sampling is 0, client shuffling 1 (fedavg.py)


def noise(seed: int, round_: int, std: float, size: int) -> np.ndarray:
    """The Gaussian noise of round t, float64, from SeedSequence([2, seed, t]) alone."""
    return np.random.default_rng(np.random.SeedSequence([NOISE, seed, round_])).normal(0.0, std, size)


def epsilon(noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    """ε of `rounds` rounds of the subsampled Gaussian mechanism at δ (Opacus's RDP accountant)."""
    if rounds == 0:
        return 0.0
    if noise_multiplier == 0:
        return float("inf")
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, rounds)]
    return float(accountant.get_epsilon(delta))
