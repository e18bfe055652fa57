"""Shared fixtures: federations made by the real `python -m data_prep`, once per test session."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA_PREP_TIMEOUT_S = 180  # the first run of a fresh machine also downloads the 20 MB MNIST wheel


def pytest_configure(config):
    """The references the tests compute in this process use one torch thread, and the OpenMP threads of the
    jobs the tests start sleep while they wait (OMP_WAIT_POLICY=PASSIVE) instead of spinning. The 2 cores are
    shared by the tests' MPI jobs and, under xdist, another worker's: a spinning thread holds a core that
    another process needs. `python -m fedmpi.check` on the CNN with 2 threads beside another worker's job took
    45 s spinning and 9.6 s passive. Neither changes a number: OpenMP's wait policy is scheduling only."""
    import torch

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def run_data_prep():
    """run_data_prep(*args) -> CompletedProcess of `python -m data_prep *args` (text output, not checked)."""
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "data_prep", *map(str, args)],
            cwd=ROOT, capture_output=True, text=True, timeout=DATA_PREP_TIMEOUT_S,
        )
    return run


@pytest.fixture(scope="session")
def federation(tmp_path_factory, run_data_prep):
    """federation(partition="iid", clients=100, seed=0, **kw) -> Path of a federation folder.

    Extra keywords become flags (`clients_per_file=50` -> `--clients-per-file 50`, `True` -> a bare
    flag). Each distinct argument set is made once per session and then shared: treat it as read-only.
    """
    made = {}

    def make(partition="iid", clients=100, seed=0, **kw):
        options = {"partition": partition, "clients": clients, "seed": seed, **kw}
        key = tuple(sorted(options.items()))
        if key not in made:
            flags = []
            for name, value in options.items():
                flags.append("--" + name.replace("_", "-"))
                if value is not True:
                    flags.append(value)
            out = tmp_path_factory.mktemp("federation") / "fed"
            done = run_data_prep(*flags, "--out", out)
            assert done.returncode == 0, f"data_prep {flags} failed:\n{done.stderr}"
            made[key] = out
        return made[key]

    return make
