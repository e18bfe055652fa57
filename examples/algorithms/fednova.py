"""FedNova (Wang et al., "Tackling the Objective Inconsistency Problem in Heterogeneous Federated
Optimization", NeurIPS 2020), for clients that run local SGD, with or without momentum.

A client that takes more local steps moves further, so FedAvg's average leans towards the
objectives of the clients with more data. FedNova averages the normalized updates Δ_k / τ_k
(τ_k: client k's local steps) and rescales by the effective number of steps:

    Δ = τ_eff · Σ p_k Δ_k / τ_k,    p_k = n_k / Σ n_j,    τ_eff = Σ p_k τ_k    (sums over the round's clients)

With plain SGD the paper's a_k is all ones, so ‖a_k‖₁ = τ_k; with client momentum ρ it is
Σ_{i=1..τ_k} (1 − ρ^i)/(1 − ρ), and τ_k above stands for ‖a_k‖₁ (the paper's eq. 6; weight decay is part
of the client's objective, as in the authors' code). Every client adds n_k Δ_k / ‖a_k‖₁ to the weighted
sum, n_k to "weight" and n_k ‖a_k‖₁ to its own scalar "steps"; the server has no state.

    python -m fedmpi --data DATA --algorithm examples.algorithms.fednova:FedNova
"""
from fedmpi.algorithms.base import Algorithm


class FedNova(Algorithm):
    title = "FedNova"
    scalars = ("steps",)   # Σ n_k τ_k, summed in the round's reduction beside fedmpi's own
    dp_compatible = False  # its clients do not contribute FedAvg's way

    def contribute(self, update, extra, sums):
        rho, tau = self.run.cfg.client_momentum, update.steps
        norm = (tau - rho * (1 - rho**tau) / (1 - rho)) / (1 - rho) if rho else tau  # ‖a_k‖₁
        sums.add_delta(update.delta, update.examples / norm)
        sums.add("weight", update.examples)
        sums.add("steps", update.examples * norm)

    def aggregate(self, sums, round_, sampled):
        tau_eff = sums["steps"] / sums["weight"]
        return sums.delta_sum() * (tau_eff / sums["weight"])
