"""Files a run writes: atomically, and with one line naming the file when the disk says no.

Every file is written to a temporary name in its folder, fsynced, renamed
over the old one and the folder fsynced: a kill at any moment leaves the old
or the new file, never a torn one. A full disk, a read-only mount or a
missing permission becomes a FedMPIError naming the file and the reason,
and the temporary file is removed.
"""
from __future__ import annotations

import os
from pathlib import Path

from fedmpi.errors import FedMPIError

TMP_SUFFIX = ".tmp"


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_folder(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise cannot_write(path, e) from None


def fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def cannot_write(path: Path, e: OSError) -> FedMPIError:
    return FedMPIError(f"{path}: cannot write: {e.strerror or e}")


def remove_leftovers(folder: Path) -> None:
    """Temporary files of a writer that was killed mid-write (their final names are intact)."""
    for tmp in folder.glob("*" + TMP_SUFFIX):
        tmp.unlink(missing_ok=True)
