"""Server optimizers: how the server turns the round's averaged update into new weights.

The averaged client update Δ_t = Σ w_k Δ_k / Σ w_k is the server's
pseudo-gradient, with the sign of a descent step (Reddi et al., "Adaptive
Federated Optimization", ICLR 2021, Algorithm 2). With η the server learning
rate:

- sgd:      x ← x + η Δ                      (η = 1: FedAvg, McMahan et al. 2017)
- momentum: v ← β v + Δ;  x ← x + η v        (FedAvgM, Hsu et al. 2019)
- adagrad:  m ← β1 m + (1−β1) Δ;  v ← v + Δ²;                        x ← x + η m / (√v + τ)
- yogi:     m as above;  v ← v − (1−β2) Δ² sign(v − Δ²);            x ← x + η m / (√v + τ)
- adam:     m as above;  v ← β2 v + (1−β2) Δ²;                       x ← x + η m / (√v + τ)

m starts at 0 and v at τ², as in Reddi et al.; there is no bias correction.
They act on the parameters; float buffers (BatchNorm statistics) are always
averaged (x ← x + Δ). All state is float64 and goes into the checkpoint.
"""
from __future__ import annotations

import numpy as np

NAMES = ("sgd", "momentum", "adam", "yogi", "adagrad")


class ServerOptimizer:
    def __init__(self, name: str, lr: float, momentum: float, beta1: float, beta2: float, tau: float,
                 num_params: int):
        self.name, self.lr, self.momentum, self.beta1, self.beta2, self.tau = name, lr, momentum, beta1, beta2, tau
        self.p = num_params
        self.state: dict[str, np.ndarray] = {}
        if name == "momentum":
            self.state["v"] = np.zeros(num_params)
        elif name != "sgd":
            self.state["m"] = np.zeros(num_params)
            self.state["v"] = np.full(num_params, tau * tau)

    def step(self, weights: np.ndarray, delta: np.ndarray) -> bool:
        """weights (float32 or float64, updated in place) from the averaged update `delta` (float64); False,
        with the weights left as they were, when the new ones would not be finite in their dtype."""
        p = self.p
        new = weights.astype(np.float64)
        new[p:] += delta[p:]  # buffers: averaged
        d = delta[:p]
        if self.name == "sgd":
            new[:p] += self.lr * d  # exact for η = 1: FedAvg's results do not change
        elif self.name == "momentum":
            v = self.state["v"]
            v *= self.momentum
            v += d
            new[:p] += self.lr * v
        else:
            m, v = self.state["m"], self.state["v"]
            m *= self.beta1
            m += (1 - self.beta1) * d
            square = d * d
            if self.name == "adam":
                v *= self.beta2
                v += (1 - self.beta2) * square
            elif self.name == "yogi":
                v -= (1 - self.beta2) * square * np.sign(v - square)
            else:
                v += square
            new[:p] += self.lr * m / (np.sqrt(v) + self.tau)
        with np.errstate(over="ignore"):  # a float64 beyond float32's range: inf, refused below
            new = new.astype(weights.dtype)
        if not np.isfinite(new).all():
            return False
        weights[:] = new
        return True
