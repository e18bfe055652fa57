"""FedDyn (Acar et al., "Federated Learning Based on Dynamic Regularization", ICLR 2021, Algorithm 1).

Client k keeps g_k, the gradient of its loss at its last local model (0 at first), and minimises

    L_k(θ) − ⟨g_k, θ⟩ + α/2 ‖θ − θ_{t−1}‖²,   then   g_k ← g_k − α (θ_k − θ_{t−1})

by its local SGD: each step's gradient is corrected by α (θ − θ_{t−1}) − g_k. The server keeps h:

    h ← h − α/K Σ_k (θ_k − θ_{t−1}),    θ_t = mean_k θ_k − h/α    (sums and mean over the round's clients)

so its averaged update is mean_k Δ_k − h/α (unweighted, as in the paper; float buffers are averaged).
The g_k of all K clients live on rank 0 and ride in the round's broadcast to the sampled ones, which
send back their change −α Δ_k: a client trains on any rank, and the checkpoint holds g_k and h.

    python -m fedmpi --data DATA --algorithm examples.algorithms.feddyn:FedDyn    (α = 0.01)
    ... --algorithm-args 'alpha = 0.1'  or, in the TOML config,  [algorithm_args]  alpha = 0.1
"""
import math
from dataclasses import dataclass

import numpy as np

from fedmpi.algorithms.base import Algorithm, Correction, server_array


@dataclass
class Args:
    alpha: float = 0.01  # the paper's α (it tries 0.1, 0.01, 0.001)

    def __post_init__(self):
        if not (math.isfinite(self.alpha) and 0 < self.alpha <= 1e6):
            raise ValueError(f"alpha must be a number in (0, 1e6], got {self.alpha}")


class FedDyn(Algorithm):
    title = "FedDyn"
    Args = Args
    dp_compatible = False  # g_k and h are computed from single clients' updates

    def __init__(self, run, args):
        super().__init__(run, args)
        self.alpha, m, p = args.alpha, run.clients_per_round, self.p
        self.broadcast_extra = m * p   # g_k of each sampled client, by slot
        self.reduction_extra = m * p   # its change, by slot
        self.corrects_gradients = True
        if run.on_server:
            self.g = server_array("FedDyn's per-client gradients g_k", (run.num_clients, p))
            self.h = np.zeros(p)

    def fill_broadcast(self, extra, sampled):
        extra[:] = self.g[sampled].ravel()

    def correction(self, extra, slots):
        p = self.p
        return Correction(mu=self.alpha, offsets=np.stack([-extra[p * s:p * (s + 1)] for s in slots]))

    def contribute(self, update, extra, sums):
        sums.add_delta(update.delta, 1)
        sums.add("weight", 1)
        p, s = self.p, update.slot
        sums.extra[p * s:p * (s + 1)] = -self.alpha * update.delta[:p]

    def aggregate(self, sums, round_, sampled):
        self.g[sampled] += sums.extra.reshape(len(sampled), self.p)
        total = sums.delta_sum()
        self.h -= self.alpha / self.run.num_clients * total[:self.p]
        update = total / sums["weight"]
        update[:self.p] -= self.h / self.alpha
        return update

    def state(self):
        return {"feddyn_g": self.g, "feddyn_h": self.h}

    def load_state(self, state):
        self.g[:], self.h[:] = state["feddyn_g"], state["feddyn_h"]
