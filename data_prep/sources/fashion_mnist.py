"""Fashion-MNIST: IDX files (`--source DIR`, e.g. Debian's dataset-fashion-mnist) or torchvision's download."""
from __future__ import annotations

from pathlib import Path

from data_prep.sources import Dataset, idx
from fedmpi.errors import FedMPIError

def load(source: str | None, checked: bool = True) -> Dataset:
    """IDX folders carry no published checksums: `checked` has nothing to check."""
    if source == "torchvision":
        return idx.from_torchvision("fashion-mnist", "FashionMNIST")
    if source is None or not Path(source).expanduser().is_dir():
        raise FedMPIError(f"--source {source} holds no Fashion-MNIST; for fashion-mnist use --source torchvision or a "
                          "folder of IDX files (e.g. from the Debian package dataset-fashion-mnist)")
    return idx.from_folder(Path(source).expanduser(), "FashionMNIST")
