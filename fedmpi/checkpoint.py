"""Atomic checkpoints: what a run needs to continue bit for bit after it was stopped.

A checkpoint holds w_r (the weights after round r), r, the resolved config,
the manifest's sha256 and round r's metrics record that still awaits its
accuracy. It is written to a temporary file in the run folder, fsynced and
renamed over the previous one, so a kill at any moment leaves either the old
or the new checkpoint, never a torn one.
"""
from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from fedmpi.config import FIELD_NAMES, NON_SEMANTIC, RunConfig
from fedmpi.errors import FedMPIError

# The weights are stored in the flat buffer's memory order (fedavg.FlatModel), so a change of
# models.build_model's memory layouts is a new format. 2: Linear weights input-major in every model.
FORMAT = 2
NAME = "checkpoint.h5"


@dataclass
class Checkpoint:
    round: int
    config: dict
    manifest_sha256: str
    pending: dict | None
    weights: np.ndarray | None = None


def save_checkpoint(run_dir: Path, ckpt: Checkpoint) -> None:
    path = run_dir / NAME
    tmp = run_dir / (NAME + ".tmp")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("weights", data=ckpt.weights)
        f.attrs.update(format=FORMAT, round=ckpt.round, config=RunConfig(**ckpt.config).to_toml(),
                       manifest_sha256=ckpt.manifest_sha256, pending=json.dumps(ckpt.pending))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    directory = os.open(run_dir, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def load_checkpoint(run_dir: Path, with_weights: bool) -> Checkpoint:
    path = run_dir / NAME
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise FedMPIError(f"{path}: checkpoint format {f.attrs.get('format')} is not supported (this "
                                  f"fedmpi writes format {FORMAT}); continue the run with the fedmpi that "
                                  "started it, or start over with --overwrite")
            return Checkpoint(round=int(f.attrs["round"]), config=tomllib.loads(f.attrs["config"]),
                              manifest_sha256=str(f.attrs["manifest_sha256"]),
                              pending=json.loads(f.attrs["pending"]),
                              weights=f["weights"][:] if with_weights else None)
    except (OSError, KeyError) as e:
        raise FedMPIError(f"{path}: unreadable checkpoint ({e}); remove it to start over") from None


def check_compatible(ckpt: Checkpoint, cfg: RunConfig, manifest_sha256: str, path: Path) -> None:
    """Refuse to continue a run with another federation or another semantic config."""
    if ckpt.manifest_sha256 != manifest_sha256:
        raise FedMPIError(f"{path}: made for another federation (its manifest sha256 differs from "
                          f"{cfg.data}/manifest.json); resume with the original --data")
    mine = vars(cfg)
    differing = [f"{k} {ckpt.config.get(k)!r} -> {mine[k]!r}" for k in FIELD_NAMES
                 if k not in NON_SEMANTIC and ckpt.config.get(k) != mine[k]]
    if differing:
        raise FedMPIError(f"{path}: made with another config ({'; '.join(differing)}); "
                          "resume with the original values or start a new run with another --out")
    if ckpt.round > cfg.rounds:
        raise FedMPIError(f"{path}: the checkpoint is at round {ckpt.round}, beyond rounds = {cfg.rounds}")
