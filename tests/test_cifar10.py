"""CIFAR-10 as the user brings it (the python batches), the paper's CNN and its augmentation.

No CIFAR-10 copy is reachable offline here, so a small fixture is written in the real format (pickled
dicts of uint8 rows and label lists, as torchvision downloads them); it fails the published md5s,
which data_prep checks unless --unchecked. The augmentation is compared with numpy code written here.
"""
from __future__ import annotations

import hashlib
import io
import pickle
import struct

import h5py
import numpy as np
import pytest
import torch

from data_prep.sources import cifar10
from fedmpi.engine.inputs import CifarAugment
from fedmpi.models import build_model, count_parameters
from helpers import launch, train

PER_BATCH = 12


class Python2Pickler(pickle._Pickler):
    """Writes bytes as Python 2's str opcodes (SHORT_BINSTRING / BINSTRING), as the CIFAR-10 batches
    were written; Python 3's pickler would go through _codecs.encode at protocol 2."""

    def save_bytes(self, obj):
        n = len(obj)
        self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj if n < 256 else
                   pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch = {**pickle._Pickler.dispatch, bytes: save_bytes}


def python2_pickle(obj) -> bytes:
    out = io.BytesIO()
    Python2Pickler(out, protocol=2).dump(obj)
    return out.getvalue()


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cifar") / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    written = {}
    for name in cifar10.BATCHES:
        data = rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, PER_BATCH)]
        blob = python2_pickle({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                               b"filenames": [b"x.png"] * PER_BATCH})
        (folder / name).write_bytes(blob)
        written[name] = (data.reshape(-1, 3, 32, 32), np.array(labels))
    return folder, written


def prep(run_data_prep, source, out, *flags):
    return run_data_prep("--dataset", "cifar10", "--source", source, "--clients", "5", "--out", out, *flags)


def test_the_batches_become_a_federation_of_the_same_images(batches, run_data_prep, tmp_path):
    folder, written = batches
    done = prep(run_data_prep, folder.parent, tmp_path / "fed", "--unchecked")  # the parent: found inside
    assert done.returncode == 0, done.stderr
    stored = []
    for k in range(5):
        with h5py.File(tmp_path / "fed" / f"client-{k:05d}.h5") as f:
            stored.append((f["x"][:], f["y"][:]))
    train_x = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_y = np.concatenate([written[f"data_batch_{i}"][1] for i in range(1, 6)])
    x, y = (np.concatenate([s[i] for s in stored]) for i in (0, 1))
    # every training image once, with its own label
    assert sorted(zip(map(bytes, x), y.tolist())) == sorted(zip(map(bytes, train_x), train_y.tolist()))
    with h5py.File(tmp_path / "fed" / "test.h5") as f:
        np.testing.assert_array_equal(f["x"][:], written["test_batch"][0])
        np.testing.assert_array_equal(f["y"][:], written["test_batch"][1])


@pytest.mark.parametrize("damage, expected", [("none", "md5 is"), ("missing batch", "data_batch_3 missing")])
def test_a_copy_that_fails_the_published_md5_or_lacks_a_batch_is_one_line(damage, expected, batches, run_data_prep,
                                                                         tmp_path):
    folder, _ = batches
    source = tmp_path / "copy"
    source.mkdir()
    for name in cifar10.BATCHES:
        if not (damage == "missing batch" and name == "data_batch_3"):
            (source / name).write_bytes((folder / name).read_bytes())
    assert hashlib.md5((folder / "data_batch_1").read_bytes()).hexdigest() != cifar10.BATCHES["data_batch_1"]
    done = prep(run_data_prep, source, tmp_path / "fed")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("data_prep: error: ")]
    assert len(errors) == 1 and expected in errors[0], done.stderr
    assert not (tmp_path / "fed").exists()


def test_the_checked_md5s_are_the_published_ones():
    from torchvision.datasets import CIFAR10

    assert cifar10.BATCHES == dict(CIFAR10.train_list + CIFAR10.test_list)


def test_cifar_cnn_has_the_tutorials_layers():
    conv = (5 * 5 * 3 * 64 + 64) + (5 * 5 * 64 * 64 + 64)
    dense = (6 * 6 * 64 * 384 + 384) + (384 * 192 + 192) + (192 * 10 + 10)
    assert count_parameters(build_model("cifar_cnn", (3, 24, 24), 10, 0)) == conv + dense == 1_068_298


def standardized(x):
    return (x - x.mean()) / max(x.std(), 1 / np.sqrt(x.size))


def test_augmentation_is_the_papers_crop_flip_brightness_contrast():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    augment = CifarAugment("cpu", torch.float64)
    center = augment(torch.from_numpy(images)).numpy()
    for i in range(4):
        np.testing.assert_allclose(center[i], standardized(images[i, :, 4:28, 4:28].astype(np.float64)), atol=1e-12)
    many = augment.draw(torch.Generator().manual_seed(3), 1, 20_000)[0].numpy()
    for offset in (many[:, 0], many[:, 1]):  # crop offsets 0..8, each about 1/9 of the draws
        assert np.array_equal(np.unique(offset), np.arange(9)), np.unique(offset)
        assert np.bincount(offset.astype(int)).min() > 0.9 * 20_000 / 9
    assert set(np.unique(many[:, 2])) == {0.0, 1.0} and abs(many[:, 2].mean() - 0.5) < 0.02  # flips
    assert -63 <= many[:, 3].min() < -60 and 60 < many[:, 3].max() <= 63  # brightness delta U(-63, 63)
    assert 0.2 <= many[:, 4].min() < 0.25 and 1.75 < many[:, 4].max() <= 1.8  # contrast factor U(0.2, 1.8)
    assert abs(many[:, 4].mean() - 1.0) < 0.02
    draws = augment.draw(torch.Generator().manual_seed(3), 1, 4)[0]
    got = augment(torch.from_numpy(images), draws).numpy()
    for i, (dy, dx, flip, delta, factor) in enumerate(draws.tolist()):
        x = images[i, :, int(dy):int(dy) + 24, int(dx):int(dx) + 24].astype(np.float64)
        x = x[..., ::-1] if flip else x
        x = x + delta
        mean = x.mean(axis=(1, 2), keepdims=True)
        x = (x - mean) * factor + mean
        np.testing.assert_allclose(got[i], standardized(x), atol=1e-9)


def test_two_rounds_of_the_cifar_cnn_on_the_fixture(batches, run_data_prep, tmp_path):
    folder, _ = batches
    assert prep(run_data_prep, folder, tmp_path / "fed", "--unchecked").returncode == 0
    r = train(3, tmp_path / "fed", tmp_path / "run", "--model", "cifar_cnn", "--fraction", "1", "--epochs", "1",
              "--batch-size", "6", "--lr", "0.05", "--rounds", "2", "--threads", "1", timeout=180)
    assert "1,068,298 parameters; the paper: about 10^6" in r.stdout
    assert "round 2/2" in r.stdout
    assert launch(3, ["--data", str(tmp_path / "fed"), "--model", "lstm", "--out", str(tmp_path / "x")],
                  timeout=60).returncode == 2  # an image federation is no sequence
