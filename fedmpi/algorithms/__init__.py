"""Federated optimizers behind one interface: the client's update rule, what a client adds to the round's
one reduction, and the server's update rule and state.

- fedavg: a client runs E epochs of minibatch SGD (step η) on f_k and adds n_k Δ_k to the
  reduction; the server optimizer acts on Σ n_k Δ_k / Σ n_k.
- fedprox (Li et al., MLSys 2020): the client minimises f_k(w) + μ/2 ‖w − w_t‖²; else as fedavg.
- scaffold (Karimireddy et al., ICML 2020, option II): the client's gradient is corrected by
  c − c_k; it adds n_k Δ_k and Δc_k = c_k⁺ − c_k; the server sets c_k ← c_k⁺, c ← c + Σ Δc_k / K.

SCAFFOLD: after K_k local steps, c_k⁺ = c_k − c + (w_t − y_k)/(K_k η). The
control variates live on rank 0 (c and every c_k: K·P float64 for P
parameters, e.g. 160 MB for the 2NN's 100 clients) and ride in the round's
one broadcast to the sampled clients, so a client trains anywhere, results
stay independent of the rank count, and the checkpoint holds them all.
With `dp_clip` > 0 (DP-FedAvg, algorithms/privacy.py) every client counts
alike: clipped updates are summed, noised and divided by m. The server
optimizer (algorithms/optimizers.py) turns the averaged update into w_{t+1};
sgd with server_lr 1 is the paper's FedAvg, bit for bit.
"""

NAMES = ("fedavg", "fedprox", "scaffold")  # here, without torch: the config is checked before torch is imported
