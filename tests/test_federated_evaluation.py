"""Federated evaluation (issue 26 item 7): clients' own test sets, `client_accuracy`, model_best.pt.

- data_prep --client-test-fraction F on MNIST shards: each client's training and test examples together
  are its examples without the flag, and its test set is the floor(F·n) examples the rule of
  docs/federation-format.md draws (re-implemented here), in the small and the indexed layout.
"""
from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest

from fedmpi.data import Federation

K, F = 100, 0.2


def read_group(path, group="/"):
    with h5py.File(path, "r") as f:
        return {name: f[group][name][()] for name in f[group] if isinstance(f[group][name], h5py.Dataset)}


@pytest.fixture(scope="module")
def feds(federation):
    return {"plain": federation("shards"), "held": federation("shards", client_test_fraction=F),
            "indexed": federation("shards", client_test_fraction=F, clients_per_file=30, manifest="index")}


def test_each_client_holds_out_floor_F_n_of_its_own_examples_drawn_from_the_seed(feds):
    manifest = json.loads((feds["held"] / "manifest.json").read_text())
    assert manifest["client_test"] == {"fraction": F, "split": "random", "n": 12_000, "clients_without": 0}
    indexed = Federation(feds["indexed"])
    for k in range(K):
        plain = read_group(feds["plain"] / f"client-{k:05d}.h5")
        held = read_group(feds["held"] / f"client-{k:05d}.h5")
        # the rule, written out: floor(F·n) positions from SeedSequence([seed, 2^32 + 1, k]), in order
        n = len(plain["y"])
        test = np.sort(np.random.default_rng(np.random.SeedSequence([0, 2**32 + 1, k]))
                       .choice(n, math.floor(F * n), replace=False))
        kept = np.setdiff1d(np.arange(n), test)
        for name in ("x", "y"):
            assert np.array_equal(held[name], plain[name][kept]), f"client {k}"
            assert np.array_equal(held["test_" + name], plain[name][test]), f"client {k}"
        assert (manifest["clients"][k]["n"], manifest["clients"][k]["test_n"]) == (480, 120)
        for mine, theirs in zip(indexed.load_client_test(k), (held["test_x"], held["test_y"])):
            assert np.array_equal(mine, theirs)
    assert np.array_equal(read_group(feds["held"] / "test.h5")["x"], read_group(feds["plain"] / "test.h5")["x"])
