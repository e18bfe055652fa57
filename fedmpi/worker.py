"""A worker rank: hosts its share of the clients and trains the ones assigned to it.

Client k's home is worker floor(k·W / K) (W = number of worker ranks): in a
small federation its shard is read at start and kept in memory on the
rank's device; an indexed one (more than 10^4 clients) is read a file at a
time when its clients are first sampled, in a bounded cache. To keep rounds
balanced by examples, a sampled client may be trained away from home
(fedavg.assign_to_workers); its shard is then read by that worker on first
use and kept too, so each rank reads each shard at most once. The worker also
evaluates its slice of the test set, so evaluation is split over the workers
and summed in the same reduction as the updates, and, with eval_clients, its
clients of the run's evaluation set on their own test sets (federated
evaluation, fedmpi.evaluation). How the clients train
(stacked or one at a time) is the engine's business (fedmpi.engine).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from fedmpi.algorithms.base import Algorithm, ClientUpdate
from fedmpi.config import RunConfig
from fedmpi.data import Federation
from fedmpi.engine import Engine, FlatModel
from fedmpi.engine.inputs import inputs_for
from fedmpi.errors import FedMPIError
from fedmpi.fedavg import RoundSums, assign_to_workers, client_generator, home_worker, plan_evaluation
from fedmpi.schedule import discount
from fedmpi.system import RoundPlan

# The example orders of one stack (engine.Engine.train) are made for all E epochs at once; the paper's
# settings need a few MB. Past this, E is beyond any useful value (E = 10^9 asked for 48 TB).
MAX_ORDER_BYTES = 2**31


def on_device(arrays, device):
    return tuple(torch.from_numpy(a).to(device) for a in arrays)


def load_shards(shards: tuple[dict, tuple], device: torch.device):
    """fedavg.read_home_shards's arrays, on the device."""
    clients, test = shards
    return {k: on_device(arrays, device) for k, arrays in clients.items()}, on_device(test, device)


class Worker:
    def __init__(self, cfg: RunConfig, fed: Federation, flat: FlatModel, shards, worker_index: int,
                 num_workers: int, algorithm: Algorithm):
        self.cfg = cfg
        self.fed = fed
        self.flat = flat
        self.index = worker_index
        self.num_workers = num_workers
        self.clients, self.test = shards
        self.algorithm = algorithm
        prepare = inputs_for(fed, flat.weights.device, flat.weights.dtype)
        home = np.flatnonzero(home_worker(np.arange(fed.num_clients), num_workers, fed.num_clients) == worker_index)
        first = int(home[0])
        example = self.clients.get(first) or on_device(fed.load_client(first, keep=False), flat.weights.device)
        per_example = sum(t[:1].numel() * t.element_size() for t in example)
        self.keep_files = int(fed.sizes[home].sum()) * per_example <= fed.cache_bytes  # an indexed one's: data()
        self.engine = Engine(flat, prepare, cfg.stack_clients, example, corrected=algorithm.corrects_gradients,
                             num_classes=fed.num_classes, momentum=cfg.client_momentum, weight_decay=cfg.weight_decay)
        # A batch as large as the largest client is the whole local set for every client: B = ∞, whose
        # steps are not padded to B rows (B = 10^5 on 600-example clients took 16 s and 6.9 GB a round).
        largest = int(fed.sizes.max())
        self.batch = 0 if cfg.batch_size >= largest else cfg.batch_size
        orders = self.engine.limit * cfg.epochs * (-(-largest // self.batch) * self.batch if self.batch else largest)
        if orders * 9 > MAX_ORDER_BYTES:  # an int64 index and a bool mask per example and epoch, made per stack
            raise FedMPIError(f"config field 'epochs': E = {cfg.epochs} needs {orders * 9 / 2**30:.1f} GiB of "
                              f"example orders per stack ({self.engine.limit} client(s) × E × the largest client's "
                              f"{largest} examples); lower epochs (or stack_clients)")
        self.start = torch.empty_like(flat.weights)
        # a float64 copy made once per round, not per client: w_k − w_t in float64 is exact.
        self.start64 = torch.empty_like(flat.weights, dtype=torch.float64)
        # Federated evaluation: the clients of the run's set (fedavg.plan_evaluation) whose home this worker is,
        # with their slots in it; a small federation's test sets are read (and checked) now, an indexed one's
        # on first use, like its shards.
        evaluated = plan_evaluation(cfg.seed, fed.num_clients, cfg.clients_to_evaluate(fed.num_clients))
        self.evaluates = [(slot, int(k)) for slot, k in enumerate(evaluated)
                          if home_worker(int(k), num_workers, fed.num_clients) == worker_index]
        self.client_tests = {} if fed.indexed else {k: on_device(fed.load_client_test(k), flat.weights.device)
                                                    for _, k in self.evaluates}

    def step(self, weights: np.ndarray, extra: np.ndarray, round_: int | None, sampled: np.ndarray,
             plan: RoundPlan, evaluate_now: bool, sums: RoundSums,
             versions: dict[int, np.ndarray] | None = None) -> None:
        """Evaluate the broadcast weights (if due) and train this rank's sampled clients into `sums`, each
        for the steps the round's plan gives it (none: it is dropped); `extra` is what the algorithm
        broadcast for the round (SCAFFOLD's control variates). Asynchronous: each client trains from the
        model version it started from (`versions`, by the plan's `versions`)."""
        self.start.copy_(torch.from_numpy(weights))
        self.start64.copy_(self.start)
        if evaluate_now:
            t = time.perf_counter()
            self.flat.weights.copy_(self.start)
            correct, loss, count = self.engine.evaluate(*self.test)
            for chunk_correct, chunk_loss in zip(correct, loss):
                sums.add("correct", chunk_correct)
                sums.add("test_loss", chunk_loss)
            sums.add("test_count", count)
            self._evaluate_clients(sums)
            sums.add("eval_seconds", time.perf_counter() - t)
        t = time.perf_counter()
        training = np.flatnonzero(plan.steps > 0)  # slots
        owners = assign_to_workers(sampled[training], self.fed.sizes[sampled[training]], self.num_workers,
                                   self.fed.num_clients)
        mine = {int(slot): int(sampled[slot]) for slot in training[owners == self.index]}
        data = {k: self.data(k) for k in mine.values()}
        groups: dict[int | None, list[int]] = {}  # slots by start version (None: the broadcast weights)
        for slot in mine:
            groups.setdefault(None if plan.versions is None else int(plan.versions[slot]), []).append(slot)
        for version, slots in groups.items():
            if version is not None:
                self.start.copy_(torch.from_numpy(versions[version]))
                self.start64.copy_(self.start)
            self._train(slots, mine, data, extra, round_, plan, sums)
        sums.add("train_seconds", time.perf_counter() - t)

    def _train(self, slots: list[int], mine: dict[int, int], data: dict, extra: np.ndarray, round_: int,
               plan: RoundPlan, sums: RoundSums) -> None:
        """Train the clients in `slots` from self.start, stacked as the engine chooses, into `sums`."""
        for stack in self.engine.stacks([len(data[mine[slot]][1]) for slot in slots], self.batch,
                                        [plan.cap(slot) for slot in slots]):
            stack = [slots[i] for i in stack]
            weights, losses = self.engine.train(
                self.start, [data[mine[slot]] for slot in stack],
                [client_generator(self.cfg.seed, round_ if plan.starts is None else int(plan.starts[slot]),
                                  mine[slot]) for slot in stack],
                self.cfg.epochs, self.batch, self.cfg.client_lr(round_), self._correction(extra, stack),
                [plan.cap(slot) for slot in stack])
            deltas = weights.to(torch.float64).sub_(self.start64)  # the stack's Δ_k at once: exact in float64
            for row, slot in enumerate(stack):
                self._add(mine[slot], slot, deltas[row], losses[row], extra, sums, round_, plan)

    def _correction(self, extra: np.ndarray, slots: list[int]) -> tuple[float, torch.Tensor | None] | None:
        """The algorithm's change to the local steps of the clients in `slots`, as Engine.train takes it."""
        correction = self.algorithm.correction(extra, slots)
        if correction is None:
            return None
        offsets = correction.offsets
        if offsets is not None:
            offsets = torch.from_numpy(offsets).to(device=self.flat.weights.device, dtype=self.flat.weights.dtype)
        return correction.mu, offsets

    def _evaluate_clients(self, sums: RoundSums) -> None:
        """Federated evaluation of the weights in flat.weights: each of this worker's clients of the set on its
        own test set, alone (in chunks from its first example, whatever the rank count), its number correct
        and of targets into its slot of the sums."""
        for slot, k in self.evaluates:
            if k not in self.client_tests:
                self.client_tests[k] = on_device(self.fed.load_client_test(k), self.flat.weights.device)
            correct, _, count = self.engine.evaluate(*self.client_tests[k])
            sums.client_correct[slot] = sum(correct)
            sums.client_count[slot] = count

    def data(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Client k's examples on the device; a small federation's are kept once read. An indexed one
        keeps the files of this worker's own clients when they all fit the file cache (at 10^5
        clients on 2 workers, 330 MB each), else reads each client's rows alone (10^6 clients: whole
        files read for one client each would hold GBs); those it trains away from home, alone."""
        if k not in self.clients:
            home = home_worker(k, self.num_workers, self.fed.num_clients) == self.index
            pair = on_device(self.fed.load_client(k, keep=home and self.keep_files), self.flat.weights.device)
            if self.fed.indexed:
                return pair
            self.clients[k] = pair
        return self.clients[k]

    def _add(self, k: int, slot: int, delta: torch.Tensor, loss: float, extra: np.ndarray,
             sums: RoundSums, round_: int, plan: RoundPlan) -> None:
        """Client k's update Δ_k (float64) into the round's sums (as its algorithm says), or its 'bad
        update' flag (rank 0 then skips the client or ends the run as diverged: on_bad_update)."""
        if not (np.isfinite(loss) and bool(torch.isfinite(delta).all())):
            sums.bad[slot] = 1.0
            return
        n = int(self.fed.sizes[k])
        update = ClientUpdate(k, slot, delta.cpu().numpy(), n, int(plan.steps[slot]), self.cfg.client_lr(round_))
        if plan.versions is not None:  # asynchronous: τ server updates since it started
            update.staleness = round_ - 1 - int(plan.versions[slot])
            update.discount = discount(self.cfg.staleness, update.staleness)
        self.algorithm.contribute(update, extra, sums)
        sums.add("n", n)
        sums.add("n_loss", n * loss)
