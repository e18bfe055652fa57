"""fedmpi.run: a job started from a user's script, under mpiexec or in one process, called more than once."""
import json

import numpy as np

from helpers import final_weights, launch, train

SCRIPT = """
import json, sys
import fedmpi
from fedmpi.config import RunConfig
from mpi4py import MPI

fed, out = sys.argv[1], sys.argv[2]
first = fedmpi.run({"data": fed, "out": out, "rounds": 2, "threads": 1, "seed": 3})
# the same job's config as a RunConfig, extended by a round in the same process (the lock was let go)
again = fedmpi.run(RunConfig(data=fed, out=out, rounds=2, threads=1, seed=3), rounds=3, resume=True)
seen = MPI.COMM_WORLD.gather({"rank": MPI.COMM_WORLD.rank, "first": first["rounds"], "again": again["rounds"],
                              "accuracy": again["final_test_accuracy"]})
if seen:
    print("SEEN " + json.dumps(seen), flush=True)
"""


def test_fedmpi_run_twice_in_one_script_equals_the_command_line(federation, tmp_path):
    fed = federation(clients=10)
    reference = tmp_path / "cli"
    train(3, fed, reference, "--rounds", "3", "--threads", "1", "--seed", "3")
    for ranks in (3, 0):  # under mpiexec, and one process (a notebook)
        out = tmp_path / f"api{ranks}"
        r = launch(ranks, [str(fed), str(out)], script=SCRIPT, timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        seen = next(json.loads(line[5:]) for line in r.stdout.splitlines() if line.startswith("SEEN "))
        assert sorted(s["rank"] for s in seen) == list(range(max(ranks, 1)))  # every rank got the summary
        assert all(s["first"] == 2 and s["again"] == 3 for s in seen), seen
        np.testing.assert_array_equal(final_weights(out), final_weights(reference))
        summary = json.loads((reference / "summary.json").read_text())
        assert seen[0]["accuracy"] == summary["final_test_accuracy"]


def test_version_is_the_installed_packages():
    from importlib.metadata import version

    r = launch(0, ["--version"], timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"fedmpi {version('fedmpi')}", r.stdout + r.stderr


def test_help_shows_every_field_with_its_default():
    """Help text and default come from one declaration per field (fedmpi.config.RunConfig)."""
    from dataclasses import MISSING, fields

    from fedmpi.config import RunConfig

    r = launch(0, ["--help"], timeout=60)
    text = " ".join(r.stdout.split())  # argparse wraps lines
    assert r.returncode == 0, r.stderr
    for f in fields(RunConfig):
        option = f"--{f.name.replace('_', '-')} {f.name.upper()} "  # as argparse lists it: flag, metavar
        default = f.default_factory() if f.default is MISSING else f.default  # algorithm_args: a table
        shown = "(required)" if default == "" else f"(default {default})"
        assert option in text, option
        assert shown in text.rsplit(option, 1)[1].split(" --")[0], f"{option}: {shown}"  # its help, to the next
