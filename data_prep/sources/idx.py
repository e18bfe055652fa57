"""Images in the IDX format (MNIST, Fashion-MNIST): files in a folder, or downloaded by torchvision."""
from __future__ import annotations

import gzip
from dataclasses import replace
from pathlib import Path

import numpy as np

from data_prep.sources import Dataset, cache_dir
from fedmpi.errors import FedMPIError

NUM_CLASSES = 10
STEMS = {
    "train_x": ("train-images-idx3-ubyte", 3),
    "train_y": ("train-labels-idx1-ubyte", 1),
    "test_x": ("t10k-images-idx3-ubyte", 3),
    "test_y": ("t10k-labels-idx1-ubyte", 1),
}


def from_folder(folder: Path, torchvision_class: str) -> Dataset:
    """IDX files in `folder`, or in `folder`/<class>/raw as torchvision keeps them."""
    raw = folder / torchvision_class / "raw"
    if raw.is_dir():
        folder = raw
    a = {key: read_idx(_path(folder, stem), ndim) for key, (stem, ndim) in STEMS.items()}
    for split in ("train", "test"):
        x, y = a[f"{split}_x"], a[f"{split}_y"]
        if len(x) != len(y):
            raise FedMPIError(f"{folder}: {split} has {len(x)} images but {len(y)} labels")
        if y.max() >= NUM_CLASSES:
            raise FedMPIError(f"{folder}: {split} label {y.max()} is out of range 0..{NUM_CLASSES - 1}")
    return Dataset(train_x=a["train_x"][:, None], train_y=a["train_y"].astype(np.int64),
                   test_x=a["test_x"][:, None], test_y=a["test_y"].astype(np.int64),
                   source={"kind": "idx", "path": str(folder.resolve()), "sha256": None}, num_classes=NUM_CLASSES)


def from_torchvision(name: str, torchvision_class: str) -> Dataset:
    """Download with torchvision (needs internet), then read the IDX files it keeps."""
    try:
        import torchvision
    except ImportError:
        raise FedMPIError("--source torchvision needs torchvision: pip install 'fedmpi[vision]'") from None

    root = cache_dir()
    cls = getattr(torchvision.datasets, torchvision_class)
    try:
        for train in (True, False):
            cls(root=root, train=train, download=True)
    except (OSError, RuntimeError) as e:
        why = " ".join(str(e).split())  # torchvision's message spans lines; the CLI prints one
        raise FedMPIError(f"torchvision could not download {name} into {root}: {why}") from None
    data = from_folder(root, torchvision_class)
    return replace(data, source={**data.source, "kind": "torchvision"})


def _path(folder: Path, stem: str) -> Path:
    for path in (folder / stem, folder / f"{stem}.gz"):
        if path.is_file():
            return path
    raise FedMPIError(f"{folder}: neither {stem} nor {stem}.gz is there")


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """One IDX file of unsigned bytes: magic 0x0000 08 <ndim>, big-endian uint32 sizes, then the data."""
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise FedMPIError(f"{path}: not a readable gzip file ({e})") from None
    if len(data) < 4 + 4 * ndim or data[:4] != bytes([0, 0, 8, ndim]):
        raise FedMPIError(f"{path}: not an IDX file of unsigned bytes with {ndim} dimension(s) "
                          f"(magic {data[:4].hex()})")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, offset=4))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != np.prod(shape):
        raise FedMPIError(f"{path}: header says shape {shape} ({np.prod(shape)} bytes) but {body.size} bytes follow")
    return body.reshape(shape)
