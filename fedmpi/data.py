"""Reads a federation written by data_prep (see docs/federation-format.md).

Every file is checked against the manifest's sha256 before its arrays are
used, and every array against the manifest's shapes, dtypes and label range,
so a corrupt or mismatched shard stops the job with the file's name instead
of training on garbage.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np

from fedmpi.errors import FedMPIError

FORMAT_VERSION = 1
MANIFEST_KEYS = ("format_version", "num_clients", "num_classes", "image_shape", "normalize", "test",
                 "clients", "sha256")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Federation:
    """A federation folder: its manifest, and loaders for client shards and the test set."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        manifest_path = self.folder / "manifest.json"
        if not self.folder.is_dir():
            raise FedMPIError(f"federation {self.folder}: folder not found (make one with python -m data_prep)")
        if not manifest_path.is_file():
            raise FedMPIError(f"federation {self.folder}: no manifest.json (is this a data_prep output folder?)")
        try:
            m = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as e:
            raise FedMPIError(f"{manifest_path}: not valid JSON: {e}") from None
        missing = [k for k in MANIFEST_KEYS if k not in m]
        if missing:
            raise FedMPIError(f"{manifest_path}: missing fields {', '.join(missing)}")
        if m["format_version"] != FORMAT_VERSION:
            raise FedMPIError(f"{manifest_path}: format_version {m['format_version']} is not supported "
                              f"(this fedmpi reads version {FORMAT_VERSION}); re-run data_prep")
        self.manifest = m
        self.manifest_sha256 = sha256_of(manifest_path)
        self.num_clients = int(m["num_clients"])
        self.num_classes = int(m["num_classes"])
        self.image_shape = tuple(int(s) for s in m["image_shape"])
        self.clients = m["clients"]
        if len(self.clients) != self.num_clients or [c["id"] for c in self.clients] != list(range(self.num_clients)):
            raise FedMPIError(f"{manifest_path}: 'clients' must list ids 0..{self.num_clients - 1} in order")
        for c in self.clients:
            if int(c["n"]) < 1:
                raise FedMPIError(f"{manifest_path}: client {c['id']} ({c['file']}) has no examples")
        self.sizes = np.array([int(c["n"]) for c in self.clients], dtype=np.int64)
        self._verified: set[str] = set()

    def _open(self, file: str) -> h5py.File:
        """Open a file of the federation after checking its sha256 (once per file per process)."""
        path = self.folder / file
        if not path.is_file():
            raise FedMPIError(f"{path}: file listed in the manifest is missing")
        if file not in self._verified:
            expected = self.manifest["sha256"].get(file)
            if expected is None:
                raise FedMPIError(f"{path}: no sha256 in the manifest")
            actual = sha256_of(path)
            if actual != expected:
                raise FedMPIError(f"{path}: sha256 mismatch (manifest {expected[:12]}…, file {actual[:12]}…): "
                                  "the file is corrupt or was changed after data_prep")
            self._verified.add(file)
        try:
            return h5py.File(path, "r")
        except OSError as e:
            raise FedMPIError(f"{path}: cannot read as HDF5: {e}") from None

    def _read(self, file: str, group: str, n: int, rows: slice = slice(None)):
        where = f"{self.folder / file}:{group}"
        with self._open(file) as f:
            if group not in f or "x" not in f[group] or "y" not in f[group]:
                raise FedMPIError(f"{where}: datasets 'x' and 'y' not found")
            x, y = f[group]["x"], f[group]["y"]
            if x.dtype != np.uint8 or tuple(x.shape) != (n, *self.image_shape):
                raise FedMPIError(f"{where}/x: expected uint8 {[n, *self.image_shape]}, "
                                  f"found {x.dtype} {list(x.shape)}")
            if y.dtype != np.int64 or tuple(y.shape) != (n,):
                raise FedMPIError(f"{where}/y: expected int64 [{n}], found {y.dtype} {list(y.shape)}")
            x, y = x[rows], y[rows]
        if y.size and (y.min() < 0 or y.max() >= self.num_classes):
            raise FedMPIError(f"{where}/y: labels must lie in 0..{self.num_classes - 1}, "
                              f"found {y.min()}..{y.max()}")
        return x, y

    def load_client(self, k: int):
        """uint8 images [n, C, H, W] and int64 labels [n] of client k."""
        c = self.clients[k]
        return self._read(c["file"], c.get("group", "/"), int(c["n"]))

    def load_test(self, part: int = 0, parts: int = 1, chunk: int = 1):
        """The test set, or the part-th of `parts` contiguous slices whose bounds are multiples of `chunk`."""
        t = self.manifest["test"]
        n = int(t["n"])
        chunks = -(-n // chunk)
        lo, hi = chunk * (chunks * part // parts), min(chunk * (chunks * (part + 1) // parts), n)
        return self._read(t["file"], t.get("group", "/"), n, slice(lo, hi))
