"""Federated evaluation on rank 0: per-client accuracy of the global model, summarised, and kept per client.

With `eval_clients = C_eval` the global model of every evaluated round is also
evaluated on the own test sets (data_prep --client-test-fraction) of a fixed
set of max(round(C_eval·K), 1) clients (fedmpi.fedavg.plan_evaluation). Each
client is evaluated by its home worker, whose correct and count land in the
client's slot of the round's one reduction (fedavg.RoundSums), so the numbers
do not depend on the rank count. Here rank 0 turns them into

- the round record's `client_accuracy`: `mean` (over clients), `weighted`
  (over examples: Σ correct / Σ count, so over tokens for sequences), `p10`,
  `p50`, `p90` (numpy's linear interpolation between clients), `min`, and
  `clients`, the number of clients it is over; a client of the set without a
  test example (data_prep keeps one of a client's examples for training, so a
  client of one example has none) is left out and counted in `left_out`;
- one line per evaluated round in RUN/client_accuracy.jsonl:
  {"round", "clients": ids, "accuracy": [...], "count": [...]} for those clients,
  count being each one's test examples (targets, for sequences). Like
  metrics.jsonl, a resumed run keeps the lines before its checkpoint and
  writes the later ones again (fedmpi.metrics.JsonLines).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fedmpi.metrics import JsonLines, read_records

FILE = "client_accuracy.jsonl"
PERCENTILES = (10, 50, 90)


def summarize(accuracy: np.ndarray, count: np.ndarray, left_out: int = 0) -> dict:
    """The round record's `client_accuracy` from the clients' accuracies and test counts (those with data)."""
    if not len(accuracy):
        return {"mean": None, "weighted": None, **{f"p{q}": None for q in PERCENTILES}, "min": None, "clients": 0,
                **({"left_out": left_out} if left_out else {})}
    p = np.percentile(accuracy, PERCENTILES)
    return {"mean": float(np.mean(accuracy)), "weighted": float(np.sum(accuracy * count) / np.sum(count)),
            **{f"p{q}": float(v) for q, v in zip(PERCENTILES, p)}, "min": float(np.min(accuracy)),
            "clients": len(accuracy), **({"left_out": left_out} if left_out else {})}


class ClientEvaluation:
    """Rank 0's side: the run's evaluated clients (`ids`, their slots in the sums) and client_accuracy.jsonl."""

    def __init__(self, run_dir: Path, ids: np.ndarray, kept: list[dict]):
        """`kept`: the lines a resumed run keeps (read_client_accuracy, before its checkpoint's round)."""
        self.ids = ids
        self.log = JsonLines(run_dir / FILE, kept)

    def round_record(self, round_: int, sums) -> dict:
        """Round `round_`'s summary from the reduced sums (fedavg.RoundSums), its line written to the file."""
        count = sums.client_count.copy()
        has = count > 0
        accuracy = sums.client_correct[has] / count[has]
        self.log.append({"round": round_, "clients": self.ids[has].tolist(), "accuracy": accuracy.tolist(),
                         "count": count[has].astype(np.int64).tolist()})
        return summarize(accuracy, count[has], int(np.count_nonzero(~has)))

    def sync(self) -> None:
        self.log.sync()

    def close(self) -> None:
        self.log.close()


def read_client_accuracy(run_dir: Path, notice=None) -> list[dict]:
    """The lines of RUN/client_accuracy.jsonl (none if it does not exist), each checked like metrics.jsonl's."""
    def check(record):
        accuracy, clients, count = record["accuracy"], record["clients"], record["count"]
        if not (isinstance(accuracy, list) and len(accuracy) == len(clients) == len(count)):
            raise ValueError("'clients', 'accuracy' and 'count' must be lists of one length")
        if not all(isinstance(a, (int, float)) and 0 <= a <= 1 for a in accuracy):
            raise ValueError("an accuracy outside [0, 1]")
    return read_records(Path(run_dir) / FILE, check, notice)
