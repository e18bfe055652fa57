"""Writes a federation folder exactly as docs/federation-format.md describes it.

The folder is built next to the target under a hidden name and renamed into
place only when complete, so a reader never sees half a federation, and a
crash leaves the previous one intact.
"""

import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterable
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from fedmpi.errors import FedMPIError

STOP = threading.Event()  # set (by a signal handler) to stop writing; the partial folder is removed
FORMAT_VERSION = 2  # 2: sequence and feature federations, clients.h5 indexes; fedmpi reads 1 and 2
INDEX_FROM = 10_001  # clients from which the manifest's client list moves to clients.h5 (JSON up to that)
INDEX_FILE = "clients.h5"
MANIFEST = "manifest.json"
TEST_FILE = "test.h5"


class Stopped(Exception):
    """Writing stopped on request (STOP); nothing was left behind."""


def check_target(out: Path, overwrite: bool) -> None:
    """Refuse an existing `out`, or with `overwrite`, anything but an old federation or an empty folder
    (so that a mistyped --out cannot delete unrelated files); and an `out` that cannot be made."""
    if not out.exists():
        parent = next(p for p in out.absolute().parents if p.exists())
        if not parent.is_dir():
            raise FedMPIError(f"--out {out}: cannot be made, {parent} is a file")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise FedMPIError(f"--out {out}: cannot be made, {parent} is not writable")
        return
    if not overwrite:
        raise FedMPIError(f"--out {out}: already exists; pass --overwrite to replace it")
    replaceable = out.is_dir() and ((out / MANIFEST).is_file() or not any(out.iterdir()))
    if not replaceable:
        raise FedMPIError(f"--out {out}: exists and is not a federation folder; not replacing it")


def write_federation(
    out: Path,
    data,
    clients: Iterable[tuple[np.ndarray, np.ndarray]],
    sizes: np.ndarray,
    *,
    dataset: str,
    partition: dict,
    seed: int,
    command: str,
    clients_per_file: int = 1,
    overwrite: bool = False,
    standardize: bool = True,
    index: bool | None = None,
    names: list[str] | None = None,
    client_test: dict | None = None,
) -> None:
    """Write test.h5, the client files and manifest.json into `out`, a file of clients at a time.

    `clients` yields client k's (x, y) in order, `sizes` their lengths; `data` gives the test set,
    the kind and its manifest fields (a sources.Dataset or sources.synthetic.Synthetic).
    `partition` is the manifest's `partition` entry. Without `standardize`, the manifest's
    normalisation is mean 0, std 1: the models see pixels x/255 in [0, 1]. `index` (default:
    from INDEX_FROM clients on) lists the clients in clients.h5 instead of the JSON, with each file
    packed (docs/federation-format.md), so that readers start in the same time at any K. `names`:
    the clients' names (a natural partition's). `client_test`: each client has its own test set too
    (data_prep --client-test-fraction): `clients` then yields (x, y, test x, test y), and the dict gives
    the manifest's `client_test` fields (fraction, split) and the test sizes (`sizes`).
    """
    if clients_per_file < 1:
        raise FedMPIError(f"--clients-per-file {clients_per_file}: must be >= 1")
    index = len(sizes) >= INDEX_FROM if index is None else index
    check_target(out, overwrite)
    test_x, test_y = data.test if hasattr(data, "test") else (data.test_x, data.test_y)
    test_sizes = None if client_test is None else np.asarray(client_test["sizes"], dtype=np.int64)
    check_space(out, sizes, test_x, test_y, 0 if test_sizes is None else int(test_sizes.sum()))
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(out)
        tmp.mkdir()
        with _h5_create(tmp / TEST_FILE) as f:
            _write_xy(f, test_x, test_y)
        files, entries = _write_clients(tmp, data, clients, len(sizes), clients_per_file, index, names,
                                        test_sizes is not None)
        if data.kind == "image":
            channels = data.train_x.shape[1]
            kind = {"image_shape": list(data.train_x.shape[1:]), "normalize": _normalize(data.train_x) if standardize
                    else {"mean": [0.0] * channels, "std": [1.0] * channels}}
        else:
            kind = {}
        if index:
            with _h5_create(tmp / INDEX_FILE) as f:
                f.create_dataset("n", data=np.asarray(sizes, dtype=np.int64))
                f.create_dataset("file", data=np.repeat(np.arange(len(files), dtype=np.int32),
                                                        [clients_per_file] * (len(files) - 1)
                                                        + [len(sizes) - clients_per_file * (len(files) - 1)]))
                if test_sizes is not None:
                    f.create_dataset("test_n", data=test_sizes)
        manifest = {
            "format_version": FORMAT_VERSION,
            "dataset": dataset,
            "kind": data.kind,
            "partition": partition,
            "seed": seed,
            "num_clients": len(sizes),
            "num_classes": data.num_classes,
            **kind,
            **data.fields,
            "source": data.source,
            "command": command,
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "test": {"file": TEST_FILE, "group": "/", "n": len(test_y)},
            **({} if test_sizes is None else {"client_test": {
                "fraction": client_test["fraction"], "split": client_test["split"], "n": int(test_sizes.sum()),
                "clients_without": int(np.count_nonzero(test_sizes == 0))}}),
            **({"index": {"file": INDEX_FILE, "files": files}} if index else {"clients": entries}),
            "sha256": {p.name: _sha256_synced(p) for p in sorted(tmp.iterdir())},
        }
        (tmp / MANIFEST).write_text(_manifest_json(manifest))
        if STOP.is_set():
            raise Stopped
        _replace(tmp, out, overwrite)
    except OSError as e:  # a full disk, no inodes left: one line, and nothing left behind
        shutil.rmtree(tmp, ignore_errors=True)
        name = Path(e.filename).name if e.filename else "it"
        raise FedMPIError(f"--out {out}: cannot write {name}: {e.strerror or e}; nothing was written (free space "
                          "and inodes there, or choose another --out)") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_space(out: Path, sizes: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, client_tests: int = 0) -> None:
    """Refuse, before writing anything, a federation the disk cannot hold (estimated from one test example;
    `client_tests`: the examples of the clients' own test sets)."""
    per_example = (test_x[0].nbytes + test_y[0].nbytes) if len(test_y) else 0
    need = int(per_example * (int(np.sum(sizes)) + client_tests + len(test_y)) * 1.05) + 4096 * (len(sizes) + 16)
    folder = next(p for p in [out.absolute().parent, *out.absolute().parents] if p.exists())
    free = shutil.disk_usage(folder).free
    if need > free:
        raise FedMPIError(f"--out {out}: the federation needs about {need / 2**30:.1f} GiB and {folder} has "
                          f"{free / 2**30:.1f} GiB free; choose fewer clients or another disk")


def _remove_abandoned(out: Path) -> None:
    """Half-written federations of data_prep runs that were killed (SIGKILL, a node lost)."""
    for partial in out.parent.glob(f".{out.name}.partial-*"):
        pid = partial.name.rpartition("-")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(partial, ignore_errors=True)


@contextmanager
def _h5_create(path: Path):
    """h5py.File(path, "w"), whose errors (a full disk, no inodes left) name the file as Python's own do."""
    try:
        with h5py.File(path, "w") as f:
            yield f
    except OSError as e:
        raise OSError(e.errno, os.strerror(e.errno) if e.errno else str(e), str(path)) from None


def _write_xy(group: h5py.Group, x: np.ndarray, y: np.ndarray, prefix: str = "") -> None:
    """Uncompressed, contiguous datasets: a client's shard is read whole, as fast as the disk allows.
    Images: x uint8, y int64; sequences: x and y int16 (docs/federation-format.md). `prefix` "test_": a
    client's own test set."""
    group.create_dataset(prefix + "x", data=np.ascontiguousarray(x))
    group.create_dataset(prefix + "y", data=np.ascontiguousarray(y))


def _write_clients(folder: Path, data, clients: Iterable, num_clients: int, per_file: int,
                   packed: bool, names: list[str] | None, tests: bool) -> tuple[list[str], list[dict]]:
    """The client files: one client per file (root group), `per_file` clients per file in groups
    /clients/<id>, or packed: per file one x and one y of all its clients and `offsets` [c + 1] where
    client first + i's rows begin (attribute `first`). With `tests`, each client's own test set beside its
    training examples: `test_x`, `test_y` in its group, or packed with `test_offsets`. Returns the file
    names and the JSON entries."""
    files, entries = [], []
    clients = iter(clients)
    started, shown = time.monotonic(), time.monotonic()
    for first in range(0, num_clients, per_file):
        if STOP.is_set():
            raise Stopped
        ids = range(first, min(first + per_file, num_clients))
        name = f"client-{first:05d}.h5" if per_file == 1 else f"clients-{ids[0]:05d}-{ids[-1]:05d}.h5"
        chunk = [next(clients) for _ in ids]
        with _h5_create(folder / name) as f:
            if packed:
                _write_xy(f, np.concatenate([c[0] for c in chunk]), np.concatenate([c[1] for c in chunk]))
                f.create_dataset("offsets", data=np.cumsum([0] + [len(c[1]) for c in chunk], dtype=np.int64))
                if tests:
                    _write_xy(f, np.concatenate([c[2] for c in chunk]), np.concatenate([c[3] for c in chunk]),
                              "test_")
                    f.create_dataset("test_offsets", data=np.cumsum([0] + [len(c[3]) for c in chunk],
                                                                     dtype=np.int64))
                f.attrs["first"] = first
            for k, (x, y, *test) in zip(ids, chunk):
                if packed:
                    continue
                group = f if per_file == 1 else f.create_group(f"clients/{k}")
                _write_xy(group, x, y)
                entry = {"id": k, "file": name, "group": group.name, "n": len(y)}
                if tests:
                    _write_xy(group, *test, "test_")
                    entry["test_n"] = len(test[1])
                if data.kind == "sequence":
                    entry["tokens"] = int((y >= 0).sum())
                else:
                    entry["label_histogram"] = np.bincount(y, minlength=data.num_classes).tolist()
                if names:
                    entry["name"] = names[k]
                entries.append(entry)
        files.append(name)
        if time.monotonic() - shown > 10:  # a progress line in batch logs
            shown = time.monotonic()
            print(f"data_prep: wrote {ids[-1] + 1:,} of {num_clients:,} clients "
                  f"({100 * (ids[-1] + 1) / num_clients:.0f} %), {shown - started:.0f} s", flush=True)
    return files, entries


def _normalize(x: np.ndarray) -> dict:
    """Per-channel mean and std of the training pixels on the 0..1 scale, exact from pixel counts."""
    values = np.arange(256, dtype=np.float64) / 255
    mean, std = [], []
    for c in range(x.shape[1]):
        p = np.bincount(x[:, c].ravel(), minlength=256) / x[:, c].size
        m = p @ values
        mean.append(float(m))
        std.append(float(np.sqrt(p @ (values - m) ** 2)))
    return {"mean": mean, "std": std}


def _manifest_json(manifest: dict) -> str:
    """JSON with one line per field, per client and per checksum: readable and diffable at any K."""
    def value(key, v):
        if key == "clients":
            return "[\n" + ",\n".join(f"  {json.dumps(c)}" for c in v) + "\n ]"
        if key == "sha256":
            return "{\n" + ",\n".join(f"  {json.dumps(f)}: {json.dumps(h)}" for f, h in v.items()) + "\n }"
        return json.dumps(v)
    return "{\n" + ",\n".join(f" {json.dumps(k)}: {value(k, v)}" for k, v in manifest.items()) + "\n}\n"


def _sha256_synced(path: Path) -> str:
    """The file's checksum; the fsync makes sure the bytes hashed are on disk before the rename."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
        os.fsync(f.fileno())
    return h.hexdigest()


def _replace(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished folder into place; with `overwrite`, the old one goes only afterwards."""
    if not out.exists():
        tmp.rename(out)
        return
    check_target(out, overwrite)
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old)
