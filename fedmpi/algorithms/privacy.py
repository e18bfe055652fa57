"""DP-FedAvg (McMahan et al., "Learning Differentially Private Recurrent Language Models", ICLR 2018).

Each sampled client's update is clipped to L2 norm S (`dp_clip`) on its
worker; the server adds Gaussian noise of standard deviation z·S
(`dp_noise_multiplier` z) to their sum and divides by m, the number of
clients sampled per round (the paper's fixed-denominator estimator with
equal client weights). The noise is drawn on rank 0 from a generator seeded
by (seed, round) alone, so a resumed run draws the same noise, value i going
to the i-th value in state_dict order (each tensor row-major), whatever the
memory layout of the flat weights.

The privacy unit is the client: two federations are neighbours when one
client's data differ (replace-one; K and m are public). ε after each round
accounts for the sampling fedmpi does: exactly m of the K clients, uniformly
without replacement, every round (fedavg.plan_round). That is the
subsampled Gaussian mechanism without replacement of Wang, Balle and
Kasiviswanathan (AISTATS 2019, Theorem 27), composed over the rounds, in
dp-accounting's RDP accountant (its public API). Replacing one client's
clipped update by another's moves the sum by up to 2S, so the noise of std
z·S is a Gaussian of noise multiplier z/2 relative to that sensitivity
(dp-accounting's GaussianDpEvent: std / L2 sensitivity under the
accountant's neighbouring relation). RDP orders from 1.25 to 64: ε as the
library's default orders give it to 4 digits for the settings of
docs/results.md, at 40 ms a round instead of 250; an optimum past 64 (tiny ε)
makes ε a little larger than it could be, never smaller.
"""
from __future__ import annotations

import numpy as np

from fedmpi.errors import FedMPIError

NOISE = 2  # SeedSequence prefix: sampling is 0, client shuffling 1 (fedavg.py)
ORDERS = [1.25, 1.5, 1.75, *range(2, 33), 40, 48, 56, 64]
# what summary.json's `dp` object says of the mechanism
SAMPLING, NEIGHBOURING = "fixed-size, without replacement", "replace-one client"


def noise(seed: int, round_: int, std: float, size: int) -> np.ndarray:
    """The Gaussian noise of round t, float64, from SeedSequence([2, seed, t]) alone."""
    return np.random.default_rng(np.random.SeedSequence([NOISE, seed, round_])).normal(0.0, std, size)


def accountant_name() -> str:
    """The accountant, with its version (for summary.json); a one-line error if it is not installed."""
    try:
        from importlib.metadata import version

        import dp_accounting  # noqa: F401
    except ImportError:
        raise FedMPIError("DP (dp_clip > 0) needs the dp-accounting package: pip install 'fedmpi[dp]'") from None
    return f"dp-accounting {version('dp-accounting')} RDP, sampled without replacement (Wang et al. 2019)"


def epsilon(noise_multiplier: float, num_clients: int, clients_per_round: int, rounds: int,
            delta: float) -> float | None:
    """ε after `rounds` rounds at δ; None for no noise (no privacy: ε is infinite)."""
    if rounds == 0:
        return 0.0
    if noise_multiplier == 0:
        return None
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    one_round = dp_accounting.SampledWithoutReplacementDpEvent(
        num_clients, clients_per_round, dp_accounting.GaussianDpEvent(noise_multiplier / 2))
    accountant = RdpAccountant(ORDERS, dp_accounting.NeighboringRelation.REPLACE_ONE)
    accountant.compose(dp_accounting.SelfComposedDpEvent(one_round, rounds))
    value = float(accountant.get_epsilon(delta))
    return value if np.isfinite(value) else None
