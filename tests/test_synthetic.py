"""Many small clients: Synthetic(α, β) federations, client indexes, lazy reading, the same results for any
rank count, and the mistakes of large federations as one line.

The generator is checked against the recipe of Li et al. (MLSys 2020) written again here with numpy:
per client k, from SeedSequence([seed, k]): u ~ N(0, α), B ~ N(0, β), W ~ N(u, 1) (60x10), b ~ N(u, 1),
v ~ N(B, 1), x ~ N(v, diag(j^-1.2)), y = argmax(xW + b).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time

import h5py
import numpy as np
import pytest

from fedmpi.data import Federation
from fedmpi.metrics import read_metrics
from helpers import final_weights, launch, train

FLAGS = ("--model", "mlp", "--fraction", "0.1", "--epochs", "2", "--batch-size", "10", "--lr", "0.05",
         "--rounds", "3", "--seed", "3", "--threads", "1", "--eval-every", "3")


def li_et_al(seed: int, k: int, n: int, alpha: float, beta: float):
    rng = np.random.default_rng(np.random.SeedSequence([seed, k]))
    u, b_mean = rng.normal(0, alpha), rng.normal(0, beta)
    w, b = rng.normal(u, 1, (60, 10)), rng.normal(u, 1, 10)
    v = rng.normal(b_mean, 1, 60)
    x = v + rng.standard_normal((n, 60)) * np.sqrt(np.arange(1, 61) ** -1.2)
    return x.astype(np.float32), np.argmax(x @ w + b, axis=1)


@pytest.fixture(scope="module")
def synthetic(run_data_prep, tmp_path_factory):
    """2,000 clients, 200 per file, listed in clients.h5 (as from 10^4 clients on), and the same as JSON."""
    d = tmp_path_factory.mktemp("synthetic")
    for manifest in ("index", "json"):
        done = run_data_prep("--dataset", "synthetic", "--model-skew", "1", "--feature-skew", "1", "--clients",
                             "2000", "--clients-per-file", "200", "--seed", "4", "--manifest", manifest,
                             "--out", d / manifest)
        assert done.returncode == 0, done.stderr
    return d


def test_clients_follow_li_et_al_and_the_power_law(synthetic):
    fed = Federation(synthetic / "index")
    assert fed.indexed and fed.kind == "features" and fed.input_shape == (60,) and fed.num_clients == 2000
    for k in (0, 7, 1999):
        x, y = fed.load_client(k)
        rx, ry = li_et_al(4, k, len(y), 1.0, 1.0)
        np.testing.assert_array_equal(x, rx)
        np.testing.assert_array_equal(y, ry)
    sizes = fed.sizes
    # The sizes' recipe: floor(lognormal(1, 2)) + 10, capped at 1000, from SeedSequence([seed, 2^32]).
    draws = np.random.default_rng(np.random.SeedSequence([4, 2**32])).lognormal(1.0, 2.0, 2000)
    np.testing.assert_array_equal(sizes, np.minimum(np.floor(draws) + 10, 1000))
    assert sizes.min() >= 10 and sizes.max() <= 1000 and abs(np.median(sizes) - (10 + np.e)) <= 1
    assert (sizes > 100).sum() > 20  # the heavy tail of lognormal(1, 2)


def test_feature_skew_spreads_the_clients_features(run_data_prep, tmp_path):
    """β is the spread of the clients' feature means (v_k ~ N(B_k, 1), B_k ~ N(0, β)); α that of their
    models, checked above through the recipe."""
    spread = {}
    for skew in ("0", "2"):
        done = run_data_prep("--dataset", "synthetic", "--model-skew", "1", "--feature-skew", skew,
                             "--clients", "200", "--min-size", "100", "--max-size", "100", "--out", tmp_path / skew)
        assert done.returncode == 0, done.stderr
        fed = Federation(tmp_path / skew)
        spread[skew] = float(np.std([fed.load_client(k)[0].mean() for k in range(200)]))
    assert spread["0"] < 0.3 and 1.5 < spread["2"] < 2.5, spread  # 1/sqrt(60)·1 = 0.13 and ~2


def test_the_index_and_the_json_manifest_hold_the_same_clients(synthetic):
    indexed, listed = Federation(synthetic / "index"), Federation(synthetic / "json")
    assert not listed.indexed and np.array_equal(indexed.sizes, listed.sizes)
    for k in (3, 999, 1998):
        for a, b in zip(indexed.load_client(k), listed.load_client(k)):
            np.testing.assert_array_equal(a, b)
    assert indexed.load_client(5, keep=False)[0].tobytes() == indexed.load_client(5)[0].tobytes()


def test_results_do_not_depend_on_the_rank_count(synthetic, tmp_path):
    """Clients of unequal sizes stacked (masked), read lazily, dealt by examples: still bitwise alike."""
    fed = synthetic / "index"
    runs = {ranks: tmp_path / f"p{ranks}" for ranks in (0, 2, 3)}
    for ranks, out in runs.items():
        train(ranks, fed, out, *FLAGS)
    for ranks in (2, 3):
        np.testing.assert_array_equal(final_weights(runs[ranks]), final_weights(runs[0]))
    assert [r["train_loss"] for r in read_metrics(runs[3])[1:]] == [r["train_loss"] for r in read_metrics(runs[0])[1:]]


def one_line(r, *parts):
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, r.stderr
    for part in parts:
        assert part in errors[0], r.stderr


@pytest.mark.parametrize("flags, expected", [
    (["--model-skew", "-1", "--feature-skew", "1"], "--model-skew -1.0: must be a finite number >= 0"),
    (["--model-skew", "1", "--feature-skew", "nan"], "--feature-skew nan"),
    (["--model-skew", "1"], "needs both"),
])
def test_bad_skews_are_one_line(flags, expected, run_data_prep, tmp_path):
    done = run_data_prep("--dataset", "synthetic", "--clients", "10", *flags, "--out", tmp_path / "fed")
    one_line(done, expected)
    assert not (tmp_path / "fed").exists()


def test_a_federation_too_large_for_the_disk_is_refused_before_writing(run_data_prep, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
    try:
        started = time.monotonic()
        done = run_data_prep("--dataset", "synthetic", "--model-skew", "1", "--feature-skew", "1",
                             "--clients", "100000", "--out", disk / "fed")
        one_line(done, "needs about", "GiB free")
        assert time.monotonic() - started < 20 and list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def copy(synthetic, tmp_path):
    fed = tmp_path / "fed"
    shutil.copytree(synthetic / "index", fed)
    return fed


def test_a_missing_file_is_found_before_round_1(synthetic, tmp_path):
    fed = copy(synthetic, tmp_path)
    (fed / "clients-01800-01999.h5").unlink()
    r = launch(3, ["--data", str(fed), "--out", str(tmp_path / "run"), *FLAGS], timeout=60)
    one_line(r, "clients-01800-01999.h5", "missing")
    assert not (tmp_path / "run").exists()


def test_a_file_damaged_after_setup_ends_the_job_at_its_first_read_and_the_checkpoint_stays_usable(synthetic,
                                                                                                     tmp_path):
    """The files are checked (sha256) when a rank first reads one, not at setup: damage is found then,
    in round 3 here, and end the job with one line naming the file; the checkpoint of round 2 resumes."""
    fed = copy(synthetic, tmp_path)
    manifest = json.loads((fed / "manifest.json").read_text())
    flags = [*FLAGS]
    flags[flags.index("--fraction") + 1] = "0.005"  # 10 of the 2,000 clients a round: most files wait

    def files_read(round_):  # the sampling of docs/architecture.md: SeedSequence([0, seed, round])
        sampled = np.random.default_rng(np.random.SeedSequence([0, 3, round_])).choice(2000, 10, replace=False)
        return {manifest["index"]["files"][k // 200] for k in sampled}
    target = sorted(files_read(3) - files_read(1) - files_read(2))[0]  # first read in round 3
    data = bytearray((fed / target).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (fed / target).write_bytes(bytes(data))
    out = tmp_path / "run"
    r = launch(3, ["--data", str(fed), "--out", str(out), *flags, "--checkpoint-every", "1"], timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert any(target in line and "sha256 mismatch" in line for line in r.stderr.splitlines()), r.stderr
    with h5py.File(out / "checkpoint.h5") as f:  # rounds 1 and 2 done, then the damage found
        assert f.attrs["round"] == 2
    shutil.copy(synthetic / "index" / target, fed / target)  # the file restored: the run resumes to the end
    train(2, fed, out, *flags, "--checkpoint-every", "1", "--resume")
    train(0, synthetic / "index", tmp_path / "whole", *flags)
    np.testing.assert_array_equal(final_weights(out), final_weights(tmp_path / "whole"))


COUNT_OPENED = """
import os, sys
import h5py
from mpi4py import MPI
opened = h5py.File.__init__
def counted(self, name, *args, **kwargs):  # every HDF5 file a rank opens by name, into its own log
    if isinstance(name, (str, os.PathLike)):
        with open(os.path.join(os.environ["OPENED_LOG"], str(MPI.COMM_WORLD.rank)), "a") as log:
            log.write(os.path.basename(name) + "\\n")
    return opened(self, name, *args, **kwargs)
h5py.File.__init__ = counted
from fedmpi.cli import main
sys.exit(main(exiting=True))
"""


def test_at_100000_clients_no_rank_opens_more_than_a_shard_before_round_1(run_data_prep, tmp_path):
    """K = 10^5 in 100 files, -n 3, no round trained (--rounds 0: set-up and round 0's evaluation): each
    rank opens the index and the test set, and a worker at most the one file of its first client (its
    engine's example); the 100 shard files are only stat'ed (docs/scaling.md, "Start-up independent of K")."""
    done = run_data_prep("--dataset", "synthetic", "--model-skew", "1", "--feature-skew", "1", "--clients", "100000",
                         "--clients-per-file", "1000", "--seed", "1", "--out", tmp_path / "fed")
    assert done.returncode == 0, done.stderr
    shards = {p.name for p in (tmp_path / "fed").glob("clients-*.h5")}
    assert len(shards) == 100
    logs = tmp_path / "opened"
    logs.mkdir()
    r = launch(3, ["--data", str(tmp_path / "fed"), "--out", str(tmp_path / "run"), "--model", "mlp", "--rounds", "0",
                   "--fraction", "0.01", "--threads", "1"], script=COUNT_OPENED, env={"OPENED_LOG": str(logs)},
               timeout=120)
    assert r.returncode == 0, r.stderr
    assert "round 0/0" in r.stdout
    for rank in range(3):
        names = (logs / str(rank)).read_text().split()
        assert "clients.h5" in names, (rank, names)  # the index: what every rank reads, counted
        assert len([n for n in names if n in shards]) <= (0 if rank == 0 else 1), (rank, names)
