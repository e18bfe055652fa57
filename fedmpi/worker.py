"""A worker rank: hosts its share of the clients and trains the sampled ones.

Client k lives on worker k mod W (W = number of worker ranks). Its shard is
read once, at start, and kept in memory as uint8 on the rank's device; the
worker also evaluates its slice of the test set, so evaluation is split over
the workers and summed in the same reduction as the updates.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from fedmpi.config import RunConfig
from fedmpi.data import Federation
from fedmpi.errors import FedMPIError
from fedmpi.fedavg import EVAL_CHUNK, FlatModel, Normalizer, RoundSums, client_generator, evaluate, local_update


def load_shards(fed: Federation, worker_index: int, num_workers: int, device: torch.device):
    """This worker's clients {k: (x uint8, y int64)} and its slice of the test set, on the device."""
    def on_device(arrays):
        return tuple(torch.from_numpy(a).to(device) for a in arrays)

    clients = {k: on_device(fed.load_client(k)) for k in range(worker_index, fed.num_clients, num_workers)}
    return clients, on_device(fed.load_test(worker_index, num_workers, EVAL_CHUNK))


class Worker:
    def __init__(self, cfg: RunConfig, fed: Federation, flat: FlatModel, shards):
        self.cfg = cfg
        self.flat = flat
        self.clients, self.test = shards
        norm = fed.manifest["normalize"]
        self.normalize = Normalizer(norm["mean"], norm["std"], flat.weights.device)
        self.start = torch.empty_like(flat.weights)

    def step(self, weights: np.ndarray, round_: int | None, sampled: np.ndarray, evaluate_now: bool,
             sums: RoundSums) -> None:
        """Evaluate the broadcast weights (if due) and train this rank's sampled clients into `sums`."""
        self.start.copy_(torch.from_numpy(weights))
        if evaluate_now:
            t = time.perf_counter()
            self.flat.weights.copy_(self.start)
            correct, loss = evaluate(self.flat.model, *self.test, self.normalize)
            sums.add("correct", correct)
            sums.add("test_loss", loss)
            sums.add("test_count", len(self.test[1]))
            sums.add("eval_seconds", time.perf_counter() - t)
        t = time.perf_counter()
        for slot, k in enumerate(sampled):
            if k in self.clients:
                self._train(round_, int(k), slot, sums)
        sums.add("train_seconds", time.perf_counter() - t)

    def _train(self, round_: int, k: int, slot: int, sums: RoundSums) -> None:
        x, y = self.clients[k]
        self.flat.weights.copy_(self.start)
        loss = local_update(self.flat, x, y, self.cfg.epochs, self.cfg.batch_size, self.cfg.lr,
                            client_generator(self.cfg.seed, round_, k), self.normalize)
        delta = self.flat.weights.double() - self.start.double()
        if not (np.isfinite(loss) and bool(torch.isfinite(delta).all())):
            if self.cfg.on_bad_update == "abort":
                raise FedMPIError(f"round {round_}: client {k} produced a non-finite update (NaN/Inf); "
                                  "lower lr, or pass --on-bad-update skip to drop such clients")
            sums.bad[slot] = 1.0
            return
        n = len(y)
        sums.delta.add_(delta.cpu(), alpha=n)
        sums.add("n", n)
        sums.add("n_loss", n * loss)
