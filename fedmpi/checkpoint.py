"""Atomic, checksummed checkpoints: what a run needs to continue bit for bit after it was stopped.

A checkpoint holds w_r (the weights after round r), r, the resolved config,
the federation's fingerprint (data.Federation.fingerprint), the model's
tensor names and shapes (engine.FlatModel.signature), round r's
metrics record that still awaits its accuracy, the algorithm's state
(server optimizer moments, SCAFFOLD's control variates) and the weights of
the best evaluated round before r (for model_best.pt), plus a sha256 over
all of them. DP-FedAvg's privacy ledger is (z, m, K, r): the config and r.
It is built in memory and written atomically (fedmpi.files), so a kill
at any moment leaves the old or the new checkpoint, never a torn one; a
checkpoint damaged later (a flipped bit on disk) is refused by its checksum.
"""
from __future__ import annotations

import hashlib
import io
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from fedmpi.config import FIELD_NAMES, NON_SEMANTIC, RunConfig
from fedmpi.errors import FedMPIError
from fedmpi.evaluation import read_client_accuracy
from fedmpi.files import write_atomically
from fedmpi.metrics import read_metrics

# The weights are stored in the flat buffer's memory order (engine.FlatModel), so a change of
# models.build_model's memory layouts is a new format. 2: Linear weights input-major in every model.
# 3: a sha256 over the contents; the federation named by its fingerprint, not its manifest's sha256.
# 4: the best evaluated round's weights and number (model_best.pt). Format 3 is still read (best unknown).
FORMAT = 4
READS = (3, 4)
NAME = "checkpoint.h5"


@dataclass
class Checkpoint:
    round: int
    config: dict
    federation: str         # data.Federation.fingerprint
    pending: dict | None
    weights: np.ndarray | None = None
    state: dict[str, np.ndarray] = field(default_factory=dict)  # the algorithm's (fedmpi.algorithms)
    model: list | None = None  # engine.FlatModel.signature(); None in checkpoints written before it was kept
    best: np.ndarray | None = None  # the weights of the best evaluated round before `round` (None: format 3)
    best_round: int | None = None


def _digest(weights: np.ndarray, attrs: dict, state: dict[str, np.ndarray], best: np.ndarray | None) -> str:
    h = hashlib.sha256(json.dumps({k: attrs[k] for k in sorted(attrs)}).encode())
    for array in (weights, *(state[k] for k in sorted(state)), *(() if best is None else [best])):
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def save_checkpoint(run_dir: Path, ckpt: Checkpoint) -> None:
    attrs = {"format": FORMAT, "round": ckpt.round, "config": RunConfig(**ckpt.config).to_toml(),
             "federation": ckpt.federation, "pending": json.dumps(ckpt.pending), "model": json.dumps(ckpt.model)}
    if ckpt.best is not None:
        attrs["best_round"] = ckpt.best_round
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.create_dataset("weights", data=ckpt.weights)
        for name, array in ckpt.state.items():
            f.create_dataset(f"state/{name}", data=array)
        if ckpt.best is not None:
            f.create_dataset("best_weights", data=ckpt.best)
        f.attrs.update(attrs, sha256=_digest(ckpt.weights, attrs, ckpt.state, ckpt.best))
    write_atomically(run_dir / NAME, buffer.getvalue())


def load_checkpoint(run_dir: Path, with_weights: bool) -> Checkpoint:
    path = run_dir / NAME
    try:
        with h5py.File(path, "r", locking=False) as f:  # written atomically, never in place: no lock needed
            if f.attrs.get("format") not in READS:
                raise FedMPIError(f"{path}: checkpoint format {f.attrs.get('format')} is not supported (this "
                                  f"fedmpi writes format {FORMAT}); continue the run with the fedmpi that "
                                  "started it, or start over with --overwrite")
            attrs = {k: f.attrs[k].item() if isinstance(f.attrs[k], np.generic) else f.attrs[k]
                     for k in ("format", "round", "config", "federation", "pending", "model", "best_round")
                     if k in f.attrs}
            weights = f["weights"][:]
            state = {name: f["state"][name][:] for name in f.get("state", {})}
            best = f["best_weights"][:] if "best_weights" in f else None
            if _digest(weights, attrs, state, best) != f.attrs["sha256"]:
                raise FedMPIError(f"{path}: checksum mismatch: the checkpoint was damaged after it was written; "
                                  "restore a copy, or start over with --overwrite")
            return Checkpoint(round=int(attrs["round"]), config=tomllib.loads(attrs["config"]),
                              federation=str(attrs["federation"]), pending=json.loads(attrs["pending"]),
                              weights=weights if with_weights else None, state=state,
                              model=json.loads(attrs.get("model", "null")),
                              best=best if with_weights else None,
                              best_round=int(attrs["best_round"]) if "best_round" in attrs else None)
    except (OSError, KeyError, ValueError) as e:
        raise FedMPIError(f"{path}: unreadable checkpoint ({e}); remove it to start over") from None


@dataclass
class Resumption:
    """What a resumed run continues from (rank 0's): its checkpoint and the records it keeps."""
    checkpoint: Checkpoint
    history: list[dict]         # the records of metrics.jsonl
    client_history: list[dict]  # the lines of client_accuracy.jsonl


def read_resumption(run_dir: Path, cfg: RunConfig, fingerprint: str) -> Resumption | None:
    """The checkpoint and records of the run in `run_dir`, checked against this job's config and
    federation (check_compatible); None if it has no checkpoint (the run starts afresh). Needs no torch:
    cli reads it before torch is imported, so a refused --resume is one line within a second."""
    path = run_dir / NAME
    if not path.exists():
        return None
    checkpoint = load_checkpoint(run_dir, with_weights=True)
    notice = lambda why: print(f"fedmpi: note: {why}", flush=True)  # noqa: E731
    history, client_history = read_metrics(run_dir, notice), read_client_accuracy(run_dir, notice)
    check_compatible(checkpoint, cfg, fingerprint, path, history)
    return Resumption(checkpoint, history, client_history)


def check_model(ckpt: Checkpoint, signature: list, path: Path) -> None:
    """Refuse weights of another model: tensors named or shaped otherwise (the user's model changed)."""
    if ckpt.model is None:  # written before checkpoints kept the model's signature: sizes at least must agree
        if ckpt.weights is not None and len(ckpt.weights) != sum(int(np.prod(s)) for _, s in signature):
            raise FedMPIError(f"{path}: made for another model ({len(ckpt.weights):,} values, this model has "
                              f"{sum(int(np.prod(s)) for _, s in signature):,}); resume with the original model")
        return
    theirs, mine = dict((n, s) for n, s in ckpt.model), dict((n, s) for n, s in signature)
    differing = [f"{n} {theirs.get(n, 'absent')} -> {mine.get(n, 'absent')}" for n in dict.fromkeys([*theirs, *mine])
                 if theirs.get(n) != mine.get(n)]
    if differing or list(theirs) != list(mine):
        shown = "; ".join(differing[:3]) + (f" and {len(differing) - 3} more" if len(differing) > 3 else "")
        raise FedMPIError(f"{path}: made for another model ({shown or 'its tensors in another order'}); resume "
                          "with the original model, or start a new run with another --out")


def check_compatible(ckpt: Checkpoint, cfg: RunConfig, fingerprint: str, path: Path, history: list[dict]) -> None:
    """Refuse to continue a run with another federation, another semantic config, or a target
    accuracy that an earlier round already reached (its weights are gone)."""
    if ckpt.federation != fingerprint:
        raise FedMPIError(f"{path}: made for another federation (its data differ from {cfg.data}); "
                          "resume with the original --data")
    mine, defaults = vars(cfg), vars(RunConfig())
    # a field the checkpoint lacks was added later: the run had its default
    theirs = {k: ckpt.config.get(k, defaults[k]) for k in FIELD_NAMES}
    differing = [f"{k} {theirs[k]!r} -> {mine[k]!r}" for k in FIELD_NAMES
                 if k not in NON_SEMANTIC and theirs[k] != mine[k]]
    if differing:
        raise FedMPIError(f"{path}: made with another config ({'; '.join(differing)}); "
                          "resume with the original values or start a new run with another --out")
    missing = sorted(set(range(ckpt.round)) - {r["round"] for r in history})
    if missing:
        span = f"{missing[0]}" if len(missing) == 1 else f"{missing[0]}..{missing[-1]} ({len(missing)} rounds)"
        raise FedMPIError(f"{path}: metrics.jsonl lacks the records of round {span} before the checkpoint's "
                          f"round {ckpt.round} (the file was cut or edited); restore it, or start over with "
                          "--overwrite")
    if ckpt.round > cfg.rounds:
        raise FedMPIError(f"{path}: the checkpoint is at round {ckpt.round}, beyond rounds = {cfg.rounds}")
    target = cfg.target_accuracy
    if target and target != ckpt.config.get("target_accuracy"):
        hit = next((r for r in history if r["round"] < ckpt.round and r.get("test_accuracy", 0) >= target), None)
        if hit:
            raise FedMPIError(f"{path}: round {hit['round']} already reached target_accuracy {target} "
                              f"({hit['test_accuracy']:.4f}), but the run went on and its weights are gone; "
                              "keep the run's target, or start a new run with another --out")
