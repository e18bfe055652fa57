"""SCAFFOLD (Karimireddy et al., ICML 2020, option II): local steps corrected by control variates.

The client's gradient is corrected by c − c_k; after its K_k local steps at η,
c_k⁺ = c_k − c + (w_t − y_k)/(K_k η), so it adds n_k Δ_k to the weighted sum and
Δc_k = c_k⁺ − c_k = −c − Δ_k/(K_k η) to its slot; the server sets
c_k ← c_k⁺ and c ← c + Σ Δc_k / K. The control variates live on rank 0 (c and
every c_k: K·P float64 for P parameters, e.g. 160 MB for the 2NN's 100
clients) and ride in the round's one broadcast to the sampled clients
(broadcast [c | c_k of each slot], reduce [Δc_k of each slot]), so a client
trains anywhere and the checkpoint holds them all. Not with DP: c would
carry each client's unclipped, unnoised update.
"""
import numpy as np

from fedmpi.algorithms.base import Algorithm, Correction, server_array


class Scaffold(Algorithm):
    title = "SCAFFOLD"
    dp_compatible = False

    def __init__(self, run, args=None):
        super().__init__(run, args)
        self.broadcast_extra = (1 + run.clients_per_round) * self.p
        self.reduction_extra = run.clients_per_round * self.p
        self.corrects_gradients = True
        self.control = None  # rows c_0..c_K-1, c: rank 0's alone (workers get theirs broadcast)
        if run.on_server:
            self.control = server_array("SCAFFOLD's control variates (one per client and the server's)",
                                        (run.num_clients + 1, self.p))

    def fill_broadcast(self, extra, sampled):
        extra[:self.p] = self.control[-1]
        extra[self.p:] = self.control[sampled].ravel()

    def aggregate(self, sums, round_, sampled):
        changes = sums.extra.reshape(len(sampled), self.p)
        self.control[sampled] += changes
        self.control[-1] += changes.sum(0) / self.run.num_clients
        return super().aggregate(sums, round_, sampled)

    def state(self):
        return {"control_variates": self.control}

    def load_state(self, state):
        self.control[:] = state["control_variates"]

    def correction(self, extra, slots):
        c = extra[:self.p]
        return Correction(offsets=np.stack([c - extra[self.p * (1 + slot):self.p * (2 + slot)] for slot in slots]))

    def contribute(self, update, extra, sums):
        super().contribute(update, extra, sums)
        c = extra[:self.p]
        change = -c - update.delta[:self.p] / (update.steps * update.lr)
        sums.extra[self.p * update.slot:self.p * (update.slot + 1)] = change
