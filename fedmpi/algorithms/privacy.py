"""DP-FedAvg (McMahan et al., "Learning Differentially Private Recurrent Language Models", ICLR 2018),
as a wrapper of any algorithm whose clients contribute FedAvg's way (`dp_compatible`).

Each sampled client's update is clipped to L2 norm S (`dp_clip`) on its
worker; the server adds Gaussian noise of standard deviation z·S
(`dp_noise_multiplier` z) to their sum and divides by m, the number of
clients sampled per round (the paper's fixed-denominator estimator with
equal client weights). What the wrapped algorithm changes in local training
(FedProx's proximal term) stays; the server optimizer (FedAdam, ...) acts on
the noised average, which is post-processing. An algorithm that keeps state
computed from single clients' updates (SCAFFOLD's control variates) would
release them unnoised and is refused. The noise is drawn on rank 0 from a generator seeded
by (seed, round) alone, so a resumed run draws the same noise, value i going
to the i-th value in state_dict order (each tensor row-major), whatever the
memory layout of the flat weights.

What ε is of. The privacy unit is the client: two federations are neighbours
when one client's data differ (replace-one; K and m are public). Each round
fedmpi samples exactly m of the K clients, uniformly without replacement
(fedavg.plan_round), and releases the noised sum of their clipped updates:
the subsampled Gaussian mechanism without replacement of Wang, Balle and
Kasiviswanathan (AISTATS 2019, Theorem 27), composed over the rounds.

Asynchronous execution (FedBuff, fedmpi/schedule.py): each server update releases the noised sum
of its buffer's clipped updates, each weighted by its staleness discount (at most 1), divided by
buffer_size, as DP-FedBuff does (Nguyen et al. 2022). Which clients fill which buffer follows from
the seed and the system model, not from uniform sampling, so no amplification by sampling is
claimed: the schedule is taken as public. A client is in at most one slot of a buffer (it trains
once at a time), so for one client each server update is a Gaussian mechanism whose mean moves by
at most 2S against noise of std z·S (noise multiplier z/2), or no release of its data at all. The
client that took part in the most server updates so far, N times, bounds ε: N composed Gaussians
are μ-GDP with μ = 2√N/z (Dong, Roth and Su, JRSS B 2022, Corollary 3.3), converted to ε at δ
exactly (their Corollary 2.13), which is tight for this mechanism. dp-accounting's PLD accountant
gives the same ε from above but takes minutes at ε in the hundreds; its RDP one is looser.

The accountant. dp-accounting 0.6.0 accounts SampledWithoutReplacementDpEvent
only in its RDP accountant, and only under REPLACE_ONE; its PLD accountant
does not support that event (PLDAccountant.supports is False), so RDP is the
tightest it offers for this mechanism. Only its public API is used.

The noise multiplier the event carries is z/2, not z. dp-accounting's RDP of
a (subsampled) Gaussian of noise multiplier σ is that of a Gaussian whose
mean moves by 1 between neighbours and whose std is σ, α/(2σ²) at order α
(_compute_rdp_sample_wor_gaussian: "the ratio of the standard deviation of
the Gaussian noise to the l2-sensitivity of the function"): σ must be std
divided by the sensitivity under the accountant's neighbouring relation.
GaussianDpEvent's own docstring (values of norm at most C, σ = std/C) is
that only under add/remove, where one value moves the sum by C. Replacing
one client's clipped update (norm ≤ S) by another's moves the sum by up to
2S, so σ = z·S / 2S = z/2: RDP 2α/z² a round before sampling, not α/(2z²).

RDP orders 1.25 to 64 (library default: up to 256 and 10^6): ε as the
default orders give it to 4 digits for the settings of docs/results.md, at
40 ms a round instead of 250; an optimum past 64 (tiny ε) makes ε a little
larger than it could be, never smaller. With z in config's range (0, or
1e-3 to 1e6) the accountant computes a finite ε for every K, m, T and δ
(measured over z from 1e-3 to 1e6, K up to 10^6, T up to 10^6, δ from
1e-300 to 1 - 1e-6; outside it, z ≥ 1e9 raises ValueError, z ≥ 1e155
OverflowError, z ≤ 1e-150 ZeroDivisionError); check() still refuses, in
set-up, a run whose ε could not be computed.
"""
from __future__ import annotations

import math
from importlib.metadata import version

import numpy as np

from fedmpi.algorithms.base import Algorithm
from fedmpi.errors import FedMPIError

NOISE = 2  # SeedSequence prefix: sampling is 0, client shuffling 1 (fedavg.py)
ORDERS = [1.25, 1.5, 1.75, *range(2, 33), 40, 48, 56, 64]
# what summary.json's `dp` object says of the mechanism
SAMPLING, NEIGHBOURING = "fixed-size without replacement", "replace-one"
ASYNC_SAMPLING = "none claimed (asynchronous: the buffers follow from the seed and the system model)"
ASYNC_ACCOUNTANT = "Gaussian DP, exact (Dong, Roth and Su 2022)"
NO_NOISE = "no noise (dp_noise_multiplier 0): clipping only, no differential privacy; ε is infinite"


def noise(seed: int, round_: int, std: float, size: int) -> np.ndarray:
    """The Gaussian noise of round t, float64, from SeedSequence([2, seed, t]) alone."""
    return np.random.default_rng(np.random.SeedSequence([NOISE, seed, round_])).normal(0.0, std, size)


def accountant_name() -> str:
    """The accountant, with its version (for summary.json); a one-line error if it is not installed."""
    try:
        import dp_accounting  # noqa: F401
    except ImportError:
        raise FedMPIError("DP (dp_clip > 0) needs the dp-accounting package: pip install 'fedmpi[dp]'") from None
    return f"dp-accounting {version('dp-accounting')} RDP"


def epsilon(noise_multiplier: float, num_clients: int, clients_per_round: int, rounds: int,
            delta: float) -> float | None:
    """ε after `rounds` rounds at δ; None for no noise (ε is infinite, and JSON has no Infinity)."""
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
    return value if math.isfinite(value) else None  # check() keeps a run from getting here


def gaussian_epsilon(noise_multiplier: float, releases: int, delta: float) -> float | None:
    """ε at δ of `releases` composed Gaussian mechanisms of noise multiplier z/2 (asynchronous DP: the
    module's docstring), exactly: μ = 2√N/z, δ(ε) = Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2) solved for ε,
    in logarithms (both terms underflow at large ε); None for no noise."""
    if releases == 0:
        return 0.0
    if noise_multiplier == 0:
        return None
    from scipy.optimize import brentq  # scipy comes with dp-accounting
    from scipy.special import log_ndtr

    mu = 2 * math.sqrt(releases) / noise_multiplier

    def log_delta(eps: float) -> float:
        first, second = log_ndtr(mu / 2 - eps / mu), eps + log_ndtr(-mu / 2 - eps / mu)
        ratio = math.exp(second - first)  # below 1 where δ(ε) > 0
        return first + math.log1p(-ratio) if ratio < 1 else -math.inf

    target = math.log(delta)
    if log_delta(0.0) <= target:
        return 0.0
    high = mu * mu / 2 + mu * (math.sqrt(2 * math.log(1 / delta)) + 1)  # Φ(−ε/μ + μ/2) < δ there
    return float(brentq(lambda eps: max(log_delta(eps), target - 1e3) - target, 0.0, high,
                        xtol=1e-15, rtol=1e-13))


def check(noise_multiplier: float, num_clients: int, clients_per_round: int, rounds: int, delta: float,
          asynchronous: bool = False) -> None:
    """Refuse in set-up, in one line, a run whose ε cannot be computed (ε grows with the rounds: the last
    round's is the one that could fail), rather than a traceback or an Infinity mid-run."""
    if noise_multiplier == 0:
        return
    try:
        value = (gaussian_epsilon(noise_multiplier, rounds, delta) if asynchronous
                 else epsilon(noise_multiplier, num_clients, clients_per_round, rounds, delta))
    except (ArithmeticError, ValueError) as e:
        value, why = None, f"{type(e).__name__}: {e}"
    else:
        why = f"ε = {value}"
    if value is None or not math.isfinite(value):
        raise FedMPIError(f"config field 'dp_noise_multiplier': ε cannot be computed for z = "
                          f"{noise_multiplier:g}, K = {num_clients}, m = {clients_per_round}, {rounds} rounds, "
                          f"δ = {delta:g} ({why}); choose z between 0.001 and 1e6")


class Private(Algorithm):
    """`inner` with DP-FedAvg's clipping, equal weights, noise and ε (the record's `epsilon`)."""

    def __init__(self, inner: Algorithm, dim_order: np.ndarray):
        """`dim_order`: the flat positions of the model's values in state_dict order (FlatModel), where
        the noise goes."""
        cfg = inner.run.cfg  # inner is dp_compatible (algorithms.check)
        super().__init__(inner.run, inner.args)
        self.inner, self.order = inner, dim_order
        self.title = f"DP-{inner.title}"
        self.clip, self.z, self.delta = cfg.dp_clip, cfg.dp_noise_multiplier, cfg.dp_delta
        self.accountant = accountant_name()  # in set-up: a missing extra is one line
        self.buffered = cfg.execution == "async"  # DP-FedBuff (inner runs asynchronously: algorithms.check)
        if self.buffered:
            self.accountant = ASYNC_ACCOUNTANT
        # asynchronous, on rank 0: how many server updates each client's data has been in (ε is the most's)
        self.participations = np.zeros(self.run.num_clients, np.int64) if self.buffered and self.run.on_server \
            else None
        if inner.run.on_server:  # and an ε that cannot be computed
            check(self.z, self.run.num_clients, self.run.clients_per_round, cfg.rounds, self.delta,
                  self.buffered)
        self.scalars = inner.scalars
        self.broadcast_extra, self.reduction_extra = inner.broadcast_extra, inner.reduction_extra
        self.corrects_gradients = inner.corrects_gradients
        self.partial_work = inner.partial_work

    def fill_broadcast(self, extra, sampled):
        self.inner.fill_broadcast(extra, sampled)

    def aggregate(self, sums, round_, sampled):
        noised = np.empty(self.run.dim)
        noised[self.order] = noise(self.run.cfg.seed, round_, self.z * self.clip, self.run.dim)  # state_dict order
        noised += sums.delta_sum()
        if self.participations is not None:
            self.participations[sampled] += 1
        return noised / self.run.clients_per_round

    def record(self, round_):
        if self.participations is not None:
            value = gaussian_epsilon(self.z, int(self.participations.max()), self.delta)
        else:
            value = epsilon(self.z, self.run.num_clients, self.run.clients_per_round, round_, self.delta)
        return {**self.inner.record(round_), "epsilon": value}

    def state(self):
        mine = {} if self.participations is None else {"dp_participations": self.participations}
        return {**self.inner.state(), **mine}

    def load_state(self, state):
        if self.participations is not None:
            self.participations = np.array(state["dp_participations"], dtype=np.int64)
        self.inner.load_state({k: v for k, v in state.items() if k != "dp_participations"})

    def correction(self, extra, slots):
        return self.inner.correction(extra, slots)

    def contribute(self, update, extra, sums):
        norm = float(np.linalg.norm(update.delta))
        if norm > self.clip:
            update.delta *= self.clip / norm
        sums.add_delta(update.delta, update.discount)  # asynchronous: its staleness weight (≤ 1), else 1
        sums.add("weight", 1)

    def summary(self, epsilon_now: float | None) -> dict:
        """What the DP guarantee of the run is, and of which mechanism (summary.json's `dp`)."""
        return {"epsilon": epsilon_now, **({"epsilon_note": NO_NOISE} if epsilon_now is None else {}),
                "delta": self.delta, "noise_multiplier": self.z, "clip": self.clip,
                "sampling": ASYNC_SAMPLING if self.buffered else SAMPLING, "neighbouring": NEIGHBOURING,
                "accountant": self.accountant,
                **({"most_participations": int(self.participations.max())} if self.buffered else {})}
