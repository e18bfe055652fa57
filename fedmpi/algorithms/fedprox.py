"""FedProx (Li et al., MLSys 2020): the client minimises f_k(w) + μ/2 ‖w − w_t‖² (μ: `prox_mu`)."""
from fedmpi.algorithms.base import Algorithm, Correction


class FedProx(Algorithm):
    title = "FedProx"
    partial_work = True  # the paper's "variable amounts of work": stragglers' updates are used
    asynchronous = True

    def __init__(self, run, args=None):
        super().__init__(run, args)
        self.mu = run.cfg.prox_mu
        self.corrects_gradients = self.mu > 0  # μ = 0 is FedAvg, on its faster engine paths

    def correction(self, extra, slots):
        return Correction(mu=self.mu) if self.mu else None
