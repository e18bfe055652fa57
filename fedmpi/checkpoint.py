"""Atomic, checksummed checkpoints: what a run needs to continue bit for bit after it was stopped.

A checkpoint holds w_r (the weights after round r), r, the resolved config,
the federation's fingerprint (data.Federation.fingerprint) and round r's
metrics record that still awaits its accuracy, plus a sha256 over all of
them. It is built in memory and written atomically (fedmpi.files), so a kill
at any moment leaves the old or the new checkpoint, never a torn one; a
checkpoint damaged later (a flipped bit on disk) is refused by its checksum.
"""
from __future__ import annotations

import hashlib
import io
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from fedmpi.config import FIELD_NAMES, NON_SEMANTIC, RunConfig
from fedmpi.errors import FedMPIError
from fedmpi.files import write_atomically

# The weights are stored in the flat buffer's memory order (engine.FlatModel), so a change of
# models.build_model's memory layouts is a new format. 2: Linear weights input-major in every model.
# 3: a sha256 over the contents; the federation named by its fingerprint, not its manifest's sha256.
FORMAT = 3
NAME = "checkpoint.h5"


@dataclass
class Checkpoint:
    round: int
    config: dict
    federation: str         # data.Federation.fingerprint
    pending: dict | None
    weights: np.ndarray | None = None


def _digest(weights: np.ndarray, attrs: dict) -> str:
    h = hashlib.sha256(json.dumps({k: attrs[k] for k in sorted(attrs)}).encode())
    h.update(np.ascontiguousarray(weights).tobytes())
    return h.hexdigest()


def save_checkpoint(run_dir: Path, ckpt: Checkpoint) -> None:
    attrs = {"format": FORMAT, "round": ckpt.round, "config": RunConfig(**ckpt.config).to_toml(),
             "federation": ckpt.federation, "pending": json.dumps(ckpt.pending)}
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.create_dataset("weights", data=ckpt.weights)
        f.attrs.update(attrs, sha256=_digest(ckpt.weights, attrs))
    write_atomically(run_dir / NAME, buffer.getvalue())


def load_checkpoint(run_dir: Path, with_weights: bool) -> Checkpoint:
    path = run_dir / NAME
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise FedMPIError(f"{path}: checkpoint format {f.attrs.get('format')} is not supported (this "
                                  f"fedmpi writes format {FORMAT}); continue the run with the fedmpi that "
                                  "started it, or start over with --overwrite")
            attrs = {k: f.attrs[k].item() if isinstance(f.attrs[k], np.generic) else f.attrs[k]
                     for k in ("format", "round", "config", "federation", "pending")}
            weights = f["weights"][:]
            if _digest(weights, attrs) != f.attrs["sha256"]:
                raise FedMPIError(f"{path}: checksum mismatch: the checkpoint was damaged after it was written; "
                                  "restore a copy, or start over with --overwrite")
            return Checkpoint(round=int(attrs["round"]), config=tomllib.loads(attrs["config"]),
                              federation=str(attrs["federation"]), pending=json.loads(attrs["pending"]),
                              weights=weights if with_weights else None)
    except (OSError, KeyError, ValueError) as e:
        raise FedMPIError(f"{path}: unreadable checkpoint ({e}); remove it to start over") from None


def check_compatible(ckpt: Checkpoint, cfg: RunConfig, fingerprint: str, path: Path, history: list[dict]) -> None:
    """Refuse to continue a run with another federation, another semantic config, or a target
    accuracy that an earlier round already reached (its weights are gone)."""
    if ckpt.federation != fingerprint:
        raise FedMPIError(f"{path}: made for another federation (its data differ from {cfg.data}); "
                          "resume with the original --data")
    mine = vars(cfg)
    differing = [f"{k} {ckpt.config.get(k)!r} -> {mine[k]!r}" for k in FIELD_NAMES
                 if k not in NON_SEMANTIC and ckpt.config.get(k) != mine[k]]
    if differing:
        raise FedMPIError(f"{path}: made with another config ({'; '.join(differing)}); "
                          "resume with the original values or start a new run with another --out")
    if ckpt.round > cfg.rounds:
        raise FedMPIError(f"{path}: the checkpoint is at round {ckpt.round}, beyond rounds = {cfg.rounds}")
    target = cfg.target_accuracy
    if target and target != ckpt.config.get("target_accuracy"):
        hit = next((r for r in history if r["round"] < ckpt.round and r.get("test_accuracy", 0) >= target), None)
        if hit:
            raise FedMPIError(f"{path}: round {hit['round']} already reached target_accuracy {target} "
                              f"({hit['test_accuracy']:.4f}), but the run went on and its weights are gone; "
                              "keep the run's target, or start a new run with another --out")
