"""CIFAR-10 from the python batches the user brings (what torchvision downloads; none can be fetched offline here).

`--source DIR` is a folder holding `data_batch_1`..`data_batch_5` and
`test_batch` (or its `cifar-10-batches-py/` subfolder), each checked against
the md5 of the published archive's files (as torchvision lists them) before
it is unpickled, with an unpickler that admits only numpy arrays. Images are
stored as uint8 [N, 3, 32, 32]; the paper's augmentation (24x24 random crops,
left-right flips, brightness and contrast) happens on the device during
training, a center crop at evaluation (`augment = "cifar"` in the manifest).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from data_prep.sources import Dataset, RestrictedUnpickler, verified
from fedmpi.errors import FedMPIError

BATCHES = {  # file -> md5 (torchvision.datasets.CIFAR10)
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
NUM_CLASSES = 10


def load(source: str | None, checked: bool = True) -> Dataset:
    if source is None:
        raise FedMPIError("--dataset cifar10 needs --source DIR, a folder with the CIFAR-10 python batches "
                          "(data_batch_1..5, test_batch); no copy can be downloaded here")
    folder = Path(source).expanduser()
    if (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    if not folder.is_dir():
        raise FedMPIError(f"--source {source}: not a folder")
    missing = [name for name in BATCHES if not (folder / name).is_file()]
    if missing:
        raise FedMPIError(f"--source {folder}: {', '.join(missing)} missing (CIFAR-10 has data_batch_1..5 and "
                          "test_batch)")
    parts = {name: _batch(folder / name, BATCHES[name], checked) for name in BATCHES}
    train = [parts[name] for name in BATCHES if name != "test_batch"]
    return Dataset(train_x=np.concatenate([x for x, _ in train]), train_y=np.concatenate([y for _, y in train]),
                   test_x=parts["test_batch"][0], test_y=parts["test_batch"][1],
                   source={"kind": "cifar10-python", "path": str(folder.resolve()), "sha256": None,
                           "checked": checked},
                   num_classes=NUM_CLASSES, fields={"augment": "cifar"})


def _batch(path: Path, md5: str, checked: bool) -> tuple[np.ndarray, np.ndarray]:
    blob = verified(path.read_bytes(), str(path), md5, algorithm="md5", checked=checked)
    try:
        d = RestrictedUnpickler(io.BytesIO(blob), encoding="bytes").load()
        x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(d[b"labels"], dtype=np.int64)
    except (KeyError, ValueError, TypeError, EOFError) as e:
        raise FedMPIError(f"{path}: not a CIFAR-10 python batch ({type(e).__name__}: {e})") from None
    if len(x) != len(y) or y.min() < 0 or y.max() >= NUM_CLASSES:
        raise FedMPIError(f"{path}: {len(x)} images, {len(y)} labels in {y.min()}..{y.max()}; expected equal counts "
                          f"and labels 0..{NUM_CLASSES - 1}")
    return x, y
