"""FedNova (Wang et al., "Tackling the Objective Inconsistency Problem in Heterogeneous Federated
Optimization", NeurIPS 2020), for clients that run plain local SGD.

A client that takes more local steps moves further, so FedAvg's average leans towards the
objectives of the clients with more data. FedNova averages the normalized updates Δ_k / τ_k
(τ_k: client k's local steps) and rescales by the effective number of steps:

    Δ = τ_eff · Σ p_k Δ_k / τ_k,    p_k = n_k / Σ n_j,    τ_eff = Σ p_k τ_k    (sums over the round's clients)

With plain SGD the paper's a_k is all ones, so ‖a_k‖₁ = τ_k. Every client adds n_k Δ_k / τ_k to the
weighted sum, n_k to "weight" and n_k τ_k to its own scalar "steps"; the server has no state.

    python -m fedmpi --data DATA --algorithm examples.algorithms.fednova:FedNova
"""
from fedmpi.algorithms.base import Algorithm


class FedNova(Algorithm):
    title = "FedNova"
    scalars = ("steps",)   # Σ n_k τ_k, summed in the round's reduction beside fedmpi's own
    dp_compatible = False  # its clients do not contribute FedAvg's way

    def contribute(self, update, extra, sums):
        sums.add_delta(update.delta, update.examples / update.steps)
        sums.add("weight", update.examples)
        sums.add("steps", update.examples * update.steps)

    def aggregate(self, sums, round_, sampled):
        tau_eff = sums["steps"] / sums["weight"]
        return sums.delta_sum() * (tau_eff / sums["weight"])
