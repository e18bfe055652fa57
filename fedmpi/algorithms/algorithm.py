"""The Algorithm of a run (see fedmpi/algorithms/__init__.py for the update rules)."""
from __future__ import annotations

import numpy as np
import torch

from fedmpi.algorithms import privacy
from fedmpi.algorithms.optimizers import ServerOptimizer
from fedmpi.errors import FedMPIError


class Algorithm:
    """One run's algorithm: `num_params` P of the model's `dim` flat values are parameters (the rest buffers)."""

    def __init__(self, cfg, num_clients: int, clients_per_round: int, dim: int, num_params: int,
                 logical_order: np.ndarray, on_server: bool):
        """`logical_order`: the flat positions of the model's values in state_dict order (FlatModel);
        `on_server`: this rank is rank 0, which alone keeps the server's state."""
        self.cfg = cfg
        self.order = logical_order
        self.k, self.m, self.dim, self.p = num_clients, clients_per_round, dim, num_params
        self.scaffold = cfg.algorithm == "scaffold"
        self.mu = cfg.prox_mu if cfg.algorithm == "fedprox" else 0.0
        self.dp = cfg.dp_clip > 0
        self.accountant = privacy.accountant_name() if self.dp else None  # in set-up: a missing extra is one line
        if self.dp and on_server:  # and an ε the accountant cannot compute
            privacy.check(cfg.dp_noise_multiplier, num_clients, clients_per_round, cfg.rounds, cfg.dp_delta)
        self.optimizer = ServerOptimizer(cfg.server_optimizer, cfg.server_lr, cfg.server_momentum,
                                         cfg.server_beta1, cfg.server_beta2, cfg.server_tau, num_params)
        # SCAFFOLD: broadcast [c | c_k of each sampled slot], reduce [Δc_k of each slot]
        self.broadcast_extra = (1 + self.m) * num_params if self.scaffold else 0
        self.reduction_extra = self.m * num_params if self.scaffold else 0
        self.control = None  # SCAFFOLD's rows c_0..c_K-1, c: rank 0's alone (workers get theirs broadcast)
        if self.scaffold and on_server:
            _check_fits("SCAFFOLD's control variates (one per client and the server's)", (num_clients + 1) * num_params)
            self.control = np.zeros((num_clients + 1, num_params))

    @property
    def corrects_gradients(self) -> bool:
        """Whether clients train on a corrected gradient (the engine then keeps every step's parameters)."""
        return bool(self.mu) or self.scaffold

    # ---- the server (rank 0) ------------------------------------------------------------------------

    def fill_broadcast(self, extra: np.ndarray, sampled: np.ndarray) -> None:
        if self.scaffold:
            extra[:self.p] = self.control[-1]
            extra[self.p:] = self.control[sampled].ravel()

    def server_step(self, weights: np.ndarray, delta_sum: np.ndarray, weight: float, extra: np.ndarray,
                    round_: int, sampled: np.ndarray) -> dict | None:
        """w_{t+1} from the reduced sums (in place); returns what the round's record gains, or None when
        w_{t+1} would not be finite (the weights are then left as they were)."""
        record = {}
        if self.dp:
            std = self.cfg.dp_noise_multiplier * self.cfg.dp_clip
            noise = np.empty(self.dim)
            noise[self.order] = privacy.noise(self.cfg.seed, round_, std, self.dim)  # drawn in state_dict order
            average = (delta_sum + noise) / self.m
            record["epsilon"] = privacy.epsilon(self.cfg.dp_noise_multiplier, self.k, self.m, round_,
                                                self.cfg.dp_delta)
        else:
            average = delta_sum / weight
        if not self.optimizer.step(weights, average):
            return None
        if self.scaffold:
            changes = extra.reshape(self.m, self.p)
            self.control[sampled] += changes
            self.control[-1] += changes.sum(0) / self.k
        return record

    def state(self) -> dict[str, np.ndarray]:
        state = {f"server_{name}": value for name, value in self.optimizer.state.items()}
        if self.scaffold:
            state["control_variates"] = self.control
        return state

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        for name in self.optimizer.state:
            self.optimizer.state[name][:] = state[f"server_{name}"]
        if self.scaffold:
            self.control[:] = state["control_variates"]

    # ---- a worker ---------------------------------------------------------------------------------

    def correction(self, extra: np.ndarray, slots: list[int], device,
                   dtype) -> tuple[float, torch.Tensor | None] | None:
        """(μ, the constant gradient corrections c − c_k of the clients in `slots` as the rows of a
        tensor, or None) for one stack of clients, as Engine.train takes it; None when no gradient
        is corrected."""
        if not self.corrects_gradients:
            return None
        if not self.scaffold:
            return self.mu, None
        c = extra[:self.p]
        offsets = np.stack([c - extra[self.p * (1 + slot):self.p * (2 + slot)] for slot in slots])
        return self.mu, torch.from_numpy(offsets).to(device=device, dtype=dtype)

    def contribute(self, delta: torch.Tensor, n: int, steps: int, lr: float, slot: int, broadcast_extra: np.ndarray,
                   sums, reduction_extra: np.ndarray) -> None:
        """Client `slot`'s update Δ_k (float64, on its device), after `steps` local steps at the round's
        learning rate `lr`, into the round's sums."""
        if self.dp:
            norm = float(torch.linalg.vector_norm(delta))
            if norm > self.cfg.dp_clip:
                delta.mul_(self.cfg.dp_clip / norm)
        weight = 1 if self.dp else n
        sums.add_delta(delta.cpu().numpy(), weight)
        sums.add("weight", weight)
        if self.scaffold:  # Δc_k = −c + (w_t − y_k)/(K η) = −c − Δ_k/(K η), on the parameters
            c = broadcast_extra[:self.p]
            change = -c - delta[:self.p].cpu().numpy() / (steps * lr)
            reduction_extra[self.p * slot:self.p * (slot + 1)] = change


def _check_fits(what: str, values: int) -> None:
    """Refuse up front server state of `values` float64 that this node cannot hold, with its checkpoint
    (built in memory: about 1.75 times the state again), instead of failing in numpy or the OOM killer."""
    with open("/proc/meminfo") as f:
        available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    need = values * 8 * 2.75
    if need > available:
        raise FedMPIError(f"config field 'algorithm': {what} need {values * 8 / 2**30:.1f} GiB on rank 0, "
                          f"{need / 2**30:.1f} GiB with a checkpoint, but {available / 2**30:.1f} GiB are available "
                          "here; use fewer clients or a smaller model (docs/scaling.md)")
