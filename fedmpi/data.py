"""Reads a federation written by data_prep (see docs/federation-format.md).

Every file is checked against the manifest's sha256 before its arrays are
used, and every array against the manifest's shapes, dtypes and label range,
so a corrupt or mismatched shard stops the job with the file's name instead
of training on garbage.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from pathlib import Path

import h5py
import numpy as np

from fedmpi.errors import FedMPIError

FORMAT_VERSIONS = (1, 2)  # 1: images only; 2 adds `kind` and sequence federations
MAX_CLASSES = 1_000_000  # far above any dataset; keeps a typo from building a model of 2^31 outputs
MAX_SIDE = 65_536        # largest image side (and channel count) accepted
# Manifest fields that say how a federation was made, not what it holds (see Federation.fingerprint).
PROVENANCE = ("command", "created", "source")
MANIFEST_KEYS = ("format_version", "num_clients", "num_classes", "test", "sha256")
KIND_KEYS = {"image": ("image_shape", "normalize"), "sequence": ("sequence_length", "vocabulary"),
             "features": ("feature_dim",)}
CACHE_BYTES = 512 << 20  # packed files a rank keeps in memory (least recently used go first)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_manifest(m: dict, path: Path) -> None:
    """The types of the fields a reader uses, so that a hand-edited manifest gives an error naming the field."""
    def is_int(v, least=0):
        return isinstance(v, int) and not isinstance(v, bool) and v >= least

    def bad(field, why):
        raise FedMPIError(f"{path}: {field} {why}")

    if not is_int(m["num_clients"], 1):
        bad("'num_clients'", f"must be an integer >= 1, found {m['num_clients']!r}")
    if not (is_int(m["num_classes"], 1) and m["num_classes"] <= MAX_CLASSES):
        bad("'num_classes'", f"must be an integer from 1 to {MAX_CLASSES:,}, found {m['num_classes']!r}")
    if not isinstance(m["sha256"], dict):
        bad("'sha256'", "must map file names to checksums")
    if m["kind"] == "features":
        if not (is_int(m["feature_dim"], 1) and m["feature_dim"] <= 1 << 20):
            bad("'feature_dim'", f"must be an integer from 1 to 2^20, found {m['feature_dim']!r}")
    elif m["kind"] == "sequence":
        if not (is_int(m["sequence_length"], 1) and m["sequence_length"] <= MAX_SIDE):
            bad("'sequence_length'", f"must be an integer from 1 to {MAX_SIDE}, found {m['sequence_length']!r}")
        if not (isinstance(m["vocabulary"], str) and len(m["vocabulary"]) == m["num_classes"]):
            bad("'vocabulary'", f"must be a string of num_classes = {m['num_classes']} tokens")
    else:
        _check_images(m, is_int, bad)
    _check_entries(m, is_int, bad)


def _check_images(m: dict, is_int, bad) -> None:
    if not (isinstance(m["image_shape"], list) and m["image_shape"]
            and all(is_int(s, 1) and s <= MAX_SIDE for s in m["image_shape"])):
        bad("'image_shape'", f"must be a list of sizes such as [1, 28, 28], found {m['image_shape']!r}")
    if m.get("augment", "cifar") != "cifar" or (m.get("augment") and m["image_shape"][0] != 3):
        bad("'augment'", f"must be \"cifar\" (3-channel images) or absent, found {m['augment']!r}")
    norm = m["normalize"]
    if not (isinstance(norm, dict) and all(isinstance(norm.get(k), list) and len(norm[k]) == m["image_shape"][0]
                                           for k in ("mean", "std"))):
        bad("'normalize'", f"must hold 'mean' and 'std' lists of {m['image_shape'][0]} value(s)")
    for key in ("mean", "std"):
        for v in norm[key]:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or (key == "std" and v <= 0):
                bad("'normalize'", f"{key} values must be finite numbers{' > 0' if key == 'std' else ''}, "
                    f"found {v!r}")


def _check_entries(m: dict, is_int, bad) -> None:
    entries = [("'test'", m["test"])]
    if ("clients" in m) == ("index" in m):
        bad("'clients' or 'index'", "one of the two must list the clients")
    if "index" in m:
        index = m["index"]
        if not (isinstance(index, dict) and isinstance(index.get("file"), str) and isinstance(index.get("files"), list)
                and all(isinstance(f, str) for f in index["files"])):
            bad("'index'", "must be an object with 'file' (clients.h5) and 'files' (the packed files, in order)")
    elif not isinstance(m["clients"], list):
        bad("'clients'", "must be a list")
    entries += [(f"client {i}", c) for i, c in enumerate(m.get("clients", []))]
    if "client_test" in m:
        if not (isinstance(m["client_test"], dict) and is_int(m["client_test"].get("n"))):
            bad("'client_test'", "must be an object with 'n', the clients' test examples (and 'fraction', 'split')")
        lacking = next((i for i, c in enumerate(m.get("clients", [])) if isinstance(c, dict)
                        and not is_int(c.get("test_n"))), None)
        if lacking is not None:
            bad(f"client {lacking}", "'test_n' (its own test examples) must be an integer >= 0, found "
                f"{m['clients'][lacking].get('test_n')!r}")
    for what, entry in entries:
        if not isinstance(entry, dict):
            bad(what, "must be an object with keys 'file', 'n' (and 'id' for clients)")
        lacking = [k for k in ("id", "file", "n") if k not in entry and (k != "id" or what != "'test'")]
        if lacking:
            bad(what, f"lacks {', '.join(repr(k) for k in lacking)}")
        if not isinstance(entry["file"], str) or not isinstance(entry.get("group", "/"), str):
            bad(what, "'file' and 'group' must be strings")
        if not is_int(entry["n"]):
            bad(what, f"'n' must be an integer >= 0, found {entry['n']!r}")


class Federation:
    """A federation folder: its manifest, and loaders for client shards and the test set.

    `fingerprint` identifies the federation by what it holds (the manifest without how and
    when it was made, so with every file's sha256): running the same data_prep command again
    gives the same fingerprint, and checkpoints made on the first copy resume on the second.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        manifest_path = self.folder / "manifest.json"
        if not self.folder.exists():
            raise FedMPIError(f"federation {self.folder}: folder not found (make one with python -m data_prep)")
        if not self.folder.is_dir():
            raise FedMPIError(f"federation {self.folder}: not a folder (--data takes the folder data_prep wrote)")
        if not manifest_path.is_file():
            raise FedMPIError(f"federation {self.folder}: no manifest.json (is this a data_prep output folder?)")
        try:
            m = json.loads(manifest_path.read_bytes())
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            raise FedMPIError(f"{manifest_path}: not valid JSON: {e}") from None
        if not isinstance(m, dict):
            raise FedMPIError(f"{manifest_path}: expected a JSON object, found {type(m).__name__}")
        if m.get("format_version") not in FORMAT_VERSIONS:
            raise FedMPIError(f"{manifest_path}: format_version {m.get('format_version')!r} is not supported "
                              f"(this fedmpi reads versions {', '.join(map(str, FORMAT_VERSIONS))}); re-run data_prep")
        m = {"kind": "image", **m}  # version 1 holds images only
        if m["kind"] not in KIND_KEYS:
            raise FedMPIError(f"{manifest_path}: 'kind' must be one of {', '.join(KIND_KEYS)}, found {m['kind']!r}")
        missing = [k for k in (*MANIFEST_KEYS, *KIND_KEYS[m["kind"]]) if k not in m]
        if missing:
            raise FedMPIError(f"{manifest_path}: missing fields {', '.join(missing)}")
        _check_manifest(m, manifest_path)
        self.manifest = m
        self.fingerprint = hashlib.sha256(json.dumps(
            {k: v for k, v in m.items() if k not in PROVENANCE}, sort_keys=True).encode()).hexdigest()
        self.num_clients = m["num_clients"]
        self.num_classes = m["num_classes"]
        self.kind = m["kind"]
        if self.kind == "image":
            # the model sees 24x24 crops of CIFAR's 32x32 images (fedmpi.engine.inputs)
            crop = (m["image_shape"][0], 24, 24) if m.get("augment") == "cifar" else None
            self.input_shape = crop or tuple(m["image_shape"])
            self._shape, self._dtypes = tuple(m["image_shape"]), (np.uint8, np.int64)
        elif self.kind == "features":
            self.input_shape = (m["feature_dim"],)
            self._shape, self._dtypes = self.input_shape, (np.float32, np.int64)
        else:
            self.input_shape = (m["sequence_length"],)
            self._shape, self._dtypes = self.input_shape, (np.int16, np.int16)
        # data_prep --client-test-fraction: each client's own test set, for federated evaluation
        self.client_test = m.get("client_test")
        self.test_sizes: np.ndarray | None = None
        self._verified: set[str] = set()
        self._packed: OrderedDict[int, tuple] = OrderedDict()  # file number -> (x, y, offsets), least recent first
        self.cache_bytes = CACHE_BYTES
        if "index" in m:
            self._read_index(manifest_path)
        else:
            self.clients = m["clients"]
            if len(self.clients) != self.num_clients or \
                    [c["id"] for c in self.clients] != list(range(self.num_clients)):
                raise FedMPIError(f"{manifest_path}: 'clients' must list ids 0..{self.num_clients - 1} in order")
            for c in self.clients:
                if c["n"] < 1:
                    raise FedMPIError(f"{manifest_path}: client {c['id']} ({c['file']}) has no examples")
            self.sizes = np.array([c["n"] for c in self.clients], dtype=np.int64)
            if self.client_test is not None:
                self.test_sizes = np.array([c["test_n"] for c in self.clients], dtype=np.int64)

    @property
    def indexed(self) -> bool:
        """Clients listed in clients.h5, each file packed: read a file at a time, when first needed."""
        return "index" in self.manifest

    def _read_index(self, manifest_path: Path) -> None:
        """The clients' sizes and files from clients.h5 (vectorised checks: start-up does not grow with K),
        and every packed file's existence (a stat each: a missing file is found before round 1)."""
        index = self.manifest["index"]
        with self._open(index["file"]) as f:
            try:
                self.sizes, self.file_of = f["n"][:].astype(np.int64), f["file"][:].astype(np.int64)
                if self.client_test is not None:
                    self.test_sizes = f["test_n"][:].astype(np.int64)
            except (KeyError, OSError) as e:
                raise FedMPIError(f"{self.folder / index['file']}: not a client index ({e})") from None
        where = self.folder / index["file"]
        files = index["files"]
        lengths = {len(self.sizes), len(self.file_of), *(() if self.test_sizes is None else [len(self.test_sizes)])}
        if lengths != {self.num_clients}:
            raise FedMPIError(f"{where}: lists {len(self.sizes)} clients, the manifest {self.num_clients}")
        if self.test_sizes is not None and self.test_sizes.min() < 0:
            raise FedMPIError(f"{where}: 'test_n' of client {int(np.argmin(self.test_sizes))} is negative")
        if self.sizes.min() < 1:
            raise FedMPIError(f"{where}: client {int(np.argmin(self.sizes))} has no examples")
        if np.any(np.diff(self.file_of) < 0) or self.file_of[0] != 0 or self.file_of[-1] != len(files) - 1:
            raise FedMPIError(f"{where}: 'file' must number the {len(files)} files in order")
        self.first_of_file = np.searchsorted(self.file_of, np.arange(len(files)))
        for name in files:
            if not (self.folder / name).is_file():
                raise FedMPIError(f"{self.folder / name}: file listed in the manifest is missing")

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
            return h5py.File(path, "r", locking=False)  # read-only; some NFS/Lustre mounts fail HDF5's locks
        except OSError as e:
            raise FedMPIError(f"{path}: cannot read as HDF5: {e}") from None

    def _read(self, file: str, group: str, n: int, rows: slice = slice(None), offsets: bool = False,
              prefix: str = ""):
        """(x, y) of a group, checked; with `offsets`, also the packed file's offsets; `prefix` "test_": the
        client's own test set (test_x, test_y, test_offsets)."""
        where = f"{self.folder / file}:{group}"
        with self._open(file) as f:
            try:
                node = f.get(group)
                if not (isinstance(node, h5py.Group) and isinstance(node.get(prefix + "x"), h5py.Dataset)
                        and isinstance(node.get(prefix + "y"), h5py.Dataset)):
                    raise FedMPIError(f"{where}: datasets '{prefix}x' and '{prefix}y' not found")
                x, y = node[prefix + "x"], node[prefix + "y"]
                shapes = {"x": (n, *self._shape), "y": (n, *self._shape[:self.kind == "sequence"])}
                for name, array, dtype in (("x", x, self._dtypes[0]), ("y", y, self._dtypes[1])):
                    if array.dtype != dtype or tuple(array.shape) != shapes[name]:
                        raise FedMPIError(f"{where}/{prefix}{name}: expected {np.dtype(dtype)} {list(shapes[name])}, "
                                          f"found {array.dtype} {list(array.shape)}")
                x, y = x[rows], y[rows]
                starts = f[prefix + "offsets"][:] if offsets else None
            except (OSError, KeyError, RuntimeError) as e:  # damaged inside, though its checksum matches
                raise FedMPIError(f"{where}: cannot read as HDF5: {e}") from None
        if self.kind == "sequence":
            # -1: no target (a padded position); tokens index the vocabulary
            if x.size and (x.min() < 0 or x.max() >= self.num_classes):
                raise FedMPIError(f"{where}/{prefix}x: tokens must lie in 0..{self.num_classes - 1}, "
                                  f"found {x.min()}..{x.max()}")
            low, what = -1, "targets"
        else:
            low, what = 0, "labels"
        if y.size and (y.min() < low or y.max() >= self.num_classes):
            raise FedMPIError(f"{where}/{prefix}y: {what} must lie in {low}..{self.num_classes - 1}, "
                              f"found {y.min()}..{y.max()}")
        return (x, y, starts) if offsets else (x, y)

    def load_client(self, k: int, keep: bool = True):
        """Client k's examples: uint8 images [n, C, H, W] and int64 labels [n], float32 features [n, D]
        and int64 labels [n], or int16 token sequences [n, T] and their int16 next-token targets [n, T]
        (-1: none). From an indexed federation, views into its packed file, read whole and cached
        (`keep`: a worker's own clients), else its rows alone (a client trained away from home)."""
        if self.indexed:
            number = int(self.file_of[k])
            first = self.first_of_file[number]
            if keep or number in self._packed:
                x, y, offsets = self._packed_file(number)
                lo, hi = offsets[k - first:][:2]
                return x[lo:hi], y[lo:hi]
            count = np.count_nonzero(self.file_of == number)
            lo = int(self.sizes[first:k].sum())
            return self._read(self.manifest["index"]["files"][number], "/", int(self.sizes[first:first + count].sum()),
                              slice(lo, lo + int(self.sizes[k])))
        c = self.clients[k]
        return self._read(c["file"], c.get("group", "/"), int(c["n"]))

    def require_client_tests(self) -> None:
        """Refuse federated evaluation (eval_clients > 0) of a federation made without client test sets."""
        if self.client_test is None:
            raise FedMPIError(f"config field 'eval_clients': the federation {self.folder} has no client test sets "
                              "(its manifest.json has no 'client_test'); make one with its data_prep command plus "
                              "--client-test-fraction F (e.g. 0.2) and another --out, or set eval_clients = 0")

    def load_client_test(self, k: int):
        """Client k's own test set (data_prep --client-test-fraction), as load_client gives its examples;
        from an indexed federation its rows alone (a client is evaluated by its home worker only)."""
        if self.test_sizes is None:
            raise FedMPIError(f"federation {self.folder}: has no client test sets (no 'client_test' in its manifest)")
        if self.indexed:
            number = int(self.file_of[k])
            first = self.first_of_file[number]
            count = np.count_nonzero(self.file_of == number)
            lo = int(self.test_sizes[first:k].sum())
            return self._read(self.manifest["index"]["files"][number], "/",
                              int(self.test_sizes[first:first + count].sum()),
                              slice(lo, lo + int(self.test_sizes[k])), prefix="test_")
        c = self.clients[k]
        return self._read(c["file"], c.get("group", "/"), int(c["test_n"]), prefix="test_")

    def _packed_file(self, number: int):
        """(x, y, offsets) of a packed file, checked against the index, kept while the cache has room."""
        if number in self._packed:
            self._packed.move_to_end(number)
            return self._packed[number]
        name = self.manifest["index"]["files"][number]
        first = self.first_of_file[number]
        sizes = self.sizes[first:first + np.count_nonzero(self.file_of == number)]
        x, y, offsets = self._read(name, "/", int(sizes.sum()), offsets=True)
        if not np.array_equal(np.diff(offsets), sizes) or offsets[0] != 0:
            raise FedMPIError(f"{self.folder / name}: its 'offsets' disagree with the client sizes in the index")
        self._packed[number] = (x, y, offsets)
        while len(self._packed) > 1 and sum(a.nbytes + b.nbytes for a, b, _ in self._packed.values()) > \
                self.cache_bytes:
            self._packed.popitem(last=False)
        return self._packed[number]

    def load_test(self, part: int = 0, parts: int = 1, chunk: int = 1):
        """The test set, or the part-th of `parts` contiguous slices whose bounds are multiples of `chunk`."""
        t = self.manifest["test"]
        n = int(t["n"])
        chunks = -(-n // chunk)
        lo, hi = chunk * (chunks * part // parts), min(chunk * (chunks * (part + 1) // parts), n)
        return self._read(t["file"], t.get("group", "/"), n, slice(lo, hi))
