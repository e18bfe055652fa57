"""The server's side of a round: apply the reduced sums, log the round, keep the outputs.

Evaluation rides in the same reduction as training: the sums of step t hold
the test results of w_t (the weights just broadcast) and the updates that
make w_{t+1}. So round t's line is written at step t, when its accuracy is known.

The best evaluated round (by central test accuracy, the earliest of equals) is
kept: its weights go to model_best.pt at the end, and into every checkpoint, so
that a resumed run knows them even when that round lies before its checkpoint.
"""
from __future__ import annotations

import dataclasses
import io
import time
from pathlib import Path

import numpy as np
import torch

from fedmpi.checkpoint import Checkpoint, Resumption, save_checkpoint
from fedmpi.config import RunConfig
from fedmpi.evaluation import FILE as CLIENT_FILE, ClientEvaluation
from fedmpi.algorithms.base import Algorithm
from fedmpi.algorithms.optimizers import ServerOptimizer
from fedmpi.fedavg import RoundSums
from fedmpi.files import write_atomically
from fedmpi.metrics import JsonLines, MetricsLog, write_json
from fedmpi.sinks import open_sinks
from fedmpi.schedule import VersionStore
from fedmpi.system import RoundPlan


class Server:
    def __init__(self, cfg: RunConfig, run_dir: Path, weights: np.ndarray, federation: str,
                 num_ranks: int, num_workers: int, resumption: Resumption | None, algorithm: Algorithm,
                 model_signature: list, evaluated: np.ndarray | None = None, versions: VersionStore | None = None):
        """`resumption`: checkpoint.read_resumption's (None: start at round 0); `evaluated`: the clients of
        federated evaluation (fedavg.plan_evaluation; empty or None: off); `versions`: asynchronous
        execution's model versions that clients still train from, which checkpoints keep."""
        self.versions = versions
        self.cfg = cfg
        self.model_signature = model_signature  # engine.FlatModel.signature(), kept in checkpoints
        self.algorithm = algorithm
        self.optimizer = ServerOptimizer(cfg.server_optimizer, cfg.server_lr, cfg.server_momentum, cfg.server_beta1,
                                         cfg.server_beta2, cfg.server_tau, algorithm.run.num_params)
        self.run_dir = run_dir
        self.weights = weights
        self.federation = federation
        self.num_ranks = num_ranks
        self.num_workers = num_workers
        self.history: list[dict] = []
        self.pending: dict | None = None  # the round trained in the last step, awaiting its accuracy
        self.target_round: int | None = None  # the round whose weights reached cfg.target_accuracy
        self.diverged: dict | None = None  # {"round", "clients"}: the round a non-finite update ended
        # the best evaluated round: its number, test accuracy and weights (None: before a format-3 checkpoint)
        self.best_round: int | None = None
        self.best_accuracy = -1.0
        self.best_weights: np.ndarray | None = None
        self.virtual_time = 0.0  # the simulated clock at the last round's end (fedmpi.system)
        resume = resumption.checkpoint if resumption else None
        if resume:
            # Keep the records of the rounds before the checkpoint; later ones are redone.
            self.history = [r for r in resumption.history if r["round"] < resume.round]
            self.pending = resume.pending
            weights[:] = resume.weights
            self._load_state(resume.state)
            self._resume_best(resume)
            self.virtual_time = next((r["virtual_time"] for r in [self.pending or {}, *reversed(self.history)]
                                      if "virtual_time" in r), 0.0)
        sinks = open_sinks(run_dir, cfg, resume.round if resume else 0)
        self.log = MetricsLog(run_dir, cfg.rounds, self.history, sinks)
        client_history = resumption.client_history if resumption else []
        kept = [r for r in client_history if r["round"] < resume.round] if resume else []
        self.client_eval = None
        if evaluated is not None and len(evaluated):
            self.client_eval = ClientEvaluation(run_dir, evaluated, kept)
        elif client_history:  # resumed without federated evaluation: the rounds it redoes get no lines
            JsonLines(run_dir / CLIENT_FILE, kept).close()
        self.started = time.perf_counter()

    def end_step(self, step: int, sampled: np.ndarray, plan: RoundPlan, sums: RoundSums, timing: dict) -> None:
        record = self.pending or {"round": step}
        if sums["test_count"]:
            record["test_accuracy"] = sums["correct"] / sums["test_count"]
            record["test_loss"] = sums["test_loss"] / sums["test_count"]
            if self.client_eval:
                record["client_accuracy"] = self.client_eval.round_record(step, sums)
        self.log.write(record)
        self.history.append(record)
        self.pending = None
        target = self.cfg.target_accuracy
        if target and self.target_round is None and record.get("test_accuracy", 0.0) >= target:
            self.target_round = step
            print(f"fedmpi: round {step} reached the target accuracy {100 * target:g}%"
                  f"{'; stopping' if step < self.cfg.rounds else ''}", flush=True)
            if step < self.cfg.rounds:
                # w_step is the result: the update trained in this step is dropped, and the
                # checkpoint makes a --resume of this run stop here again, rewriting this
                # round's record as it is now.
                self.pending = {k: v for k, v in record.items()
                                if k not in ("test_accuracy", "test_loss", "client_accuracy")}
                self.checkpoint(step)  # its best is of the rounds before step, which a resume keeps
                self.pending = None
                self._keep_if_best(record)
                return
        self._keep_if_best(record)
        if step < self.cfg.rounds:
            self.pending = self._apply(step + 1, sampled, plan, sums, timing)
            if self.diverged:
                return
            every = self.cfg.checkpoint_every
            if step + 1 == self.cfg.rounds or (every and (step + 1) % every == 0):
                self.checkpoint(step + 1)

    def _apply(self, round_: int, sampled: np.ndarray, plan: RoundPlan, sums: RoundSums, timing: dict) -> dict | None:
        """The server step of round_, or None when a non-finite update ends the run as diverged: a
        client's (on_bad_update = "abort", or every client's non-finite) or the server's own. A round
        whose clients were all dropped (fedmpi.system) leaves the weights as they were."""
        skipped = [int(sampled[i]) for i in np.flatnonzero(sums.bad)]
        if skipped and (self.cfg.on_bad_update == "abort" or sums["n"] == 0):
            self.diverged = {"round": round_, "clients": skipped}
            return None
        if sums["n"] and not self.optimizer.step(self.weights, self.algorithm.aggregate(sums, round_, sampled)):
            # the clients' updates were finite, the server's step is not: it diverged
            self.diverged = {"round": round_, "clients": [], "server": True}
            return None
        gains = self.algorithm.record(round_)
        self.virtual_time += plan.seconds
        record = {"round": round_, "clients": sampled.tolist(),
                  "train_loss": sums["n_loss"] / sums["n"] if sums["n"] else None,
                  **gains, "virtual_time": self.virtual_time, "seconds": timing["seconds"], "time": timing}
        if plan.versions is not None:  # asynchronous: server updates since each client started
            record["staleness"] = (round_ - 1 - plan.versions).tolist()
        short = plan.steps < plan.full  # clients that did not do all of E epochs (fedmpi.system)
        if short.any():
            record["dropped_clients"] = sampled[plan.steps == 0].tolist()
            record["partial_clients"] = sampled[short & (plan.steps > 0)].tolist()
        if skipped:
            record["skipped_clients"] = skipped
        return record

    def checkpoint(self, round_: int) -> float:
        """Save w_round atomically; returns the seconds it took."""
        t = time.perf_counter()
        self.log.sync()
        if self.client_eval:
            self.client_eval.sync()
        save_checkpoint(self.run_dir, Checkpoint(round_, dataclasses.asdict(self.cfg), self.federation,
                                                 self.pending, self.weights, self._state(),
                                                 self.model_signature, self.best_weights, self.best_round))
        return time.perf_counter() - t

    def _keep_if_best(self, record: dict) -> None:
        """Keep w_t as the best weights if round t's test accuracy beats every earlier round's."""
        if "test_accuracy" in record and record["test_accuracy"] > self.best_accuracy:
            self.best_round, self.best_accuracy = record["round"], record["test_accuracy"]
            if self.best_weights is None:
                self.best_weights = self.weights.copy()
            else:
                self.best_weights[:] = self.weights

    def _resume_best(self, resume: Checkpoint) -> None:
        """The best round among those the resumed run keeps, with its weights from the checkpoint (a format-3
        checkpoint has none: model_best.pt is then written only if a later round does better)."""
        evaluated = [r for r in self.history if "test_accuracy" in r]
        if evaluated:
            best = max(evaluated, key=lambda r: r["test_accuracy"])
            self.best_round, self.best_accuracy = best["round"], best["test_accuracy"]
        if resume.best is not None and resume.best_round == self.best_round:
            self.best_weights = resume.best.copy()

    def finish(self, flat) -> None:
        """Write model_best.pt, the final model (model.pt, left in `flat`, the engine's FlatModel) and
        summary.json."""
        self.log.close()
        if self.client_eval:
            self.client_eval.close()
        best_file = self.run_dir / "model_best.pt"
        if self.best_weights is not None:
            flat.weights.copy_(torch.from_numpy(self.best_weights))
            _save_model(flat.model, best_file)
        elif self.best_round is not None:
            print(f"fedmpi: note: the best round, {self.best_round}, came before the checkpoint this run resumed "
                  "from, which was written by an older fedmpi without its weights; no model_best.pt", flush=True)
        flat.weights.copy_(torch.from_numpy(self.weights))
        _save_model(flat.model, self.run_dir / "model.pt")
        evaluated = [r for r in self.history if "test_accuracy" in r]
        final = evaluated[-1] if evaluated else {}
        best = max(evaluated, key=lambda r: r["test_accuracy"]) if evaluated else {}
        write_json(self.run_dir / "summary.json", {
            "rounds": self.history[-1]["round"] if self.history else self.cfg.rounds,
            "target_accuracy": self.cfg.target_accuracy or None,
            "target_round": self.target_round,
            "final_test_accuracy": final.get("test_accuracy"),
            "best_test_accuracy": best.get("test_accuracy"),
            "best_round": best.get("round"),
            "virtual_time": self.virtual_time,
            **({"final_client_accuracy": final["client_accuracy"]} if "client_accuracy" in final else {}),
            **({"diverged": self.diverged} if self.diverged else {}),
            "ranks": self.num_ranks,
            "workers": self.num_workers,
            **({"dp": self._privacy()} if self.cfg.dp_clip else {}),
            "wall_seconds_this_job": round(time.perf_counter() - self.started, 3),
            "model": str(self.run_dir / "model.pt"),
            "best_model": str(best_file) if self.best_weights is not None else None,
        })

    def _privacy(self) -> dict:
        """summary.json's `dp`: the guarantee of the run (the last round's ε) and of which mechanism."""
        return self.algorithm.summary(next((r["epsilon"] for r in reversed(self.history) if "epsilon" in r), 0.0))

    def _state(self) -> dict[str, np.ndarray]:
        """The server optimizer's state and the algorithm's, for the checkpoint."""
        return {**{f"server_{name}": value for name, value in self.optimizer.state.items()}, **self.algorithm.state(),
                **(self.versions.state() if self.versions else {})}

    def _load_state(self, state: dict[str, np.ndarray]) -> None:
        for name in self.optimizer.state:
            self.optimizer.state[name][:] = state[f"server_{name}"]
        self.algorithm.load_state({k: v for k, v in state.items() if not k.startswith(("server_", "async_"))})

    def stop(self) -> None:
        self.log.close()
        if self.client_eval:
            self.client_eval.close()


def _save_model(model: torch.nn.Module, path: Path) -> None:
    """The model's state_dict, written atomically."""
    model_file = io.BytesIO()
    torch.save({k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, model_file)
    write_atomically(path, model_file.getvalue())
