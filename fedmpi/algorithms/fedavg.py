"""FedAvg (McMahan et al., AISTATS 2017): the interface's defaults (algorithms/base.py)."""
from fedmpi.algorithms.base import Algorithm


class FedAvg(Algorithm):
    """Clients run E epochs of minibatch SGD (step η) on f_k and add n_k Δ_k to the reduction; the server
    optimizer acts on Σ n_k Δ_k / Σ n_k (sgd with server_lr 1 is the paper's FedAvg, bit for bit)."""

    asynchronous = True  # as FedBuff (execution = async)
