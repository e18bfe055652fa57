"""Bad-input catalogue: every mistake a user can make in the config, the launch or the federation.

Each case launches a real job and checks what the user sees: exit status 2, exactly one
`fedmpi: error:` line on stderr that names the offending field or file, no traceback, nothing else
on stdout or stderr, an answer within seconds, and nothing written: the run folder does not exist
afterwards, or, where it existed before, it is byte for byte unchanged.

Every data mistake runs under `mpiexec -n 3` (a server and two workers), with the damage in a shard
that only one worker reads: setup errors are agreed on by all ranks before the first collective
(docs/architecture.md), so that still gives one line from one rank. Config mistakes, found alike by
every rank before torch is imported, and --out mistakes, rank 0's alone, mostly run as one process
without a launcher (`python -m fedmpi`), which is faster; a few of them run under mpiexec as well.

Federations are copied into the test's tmp_path before being damaged: the `federation` fixture's
folders are shared by the whole session.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from fedmpi.runfolder import MARKER
from helpers import finish, launch, train

ERROR_LINE = re.compile(r"^fedmpi: (rank \d+: )?error: ")
TIMEOUT_S = 60  # only guards against a hang
FAST_S = 20     # a user error comes back in seconds (at most a torch import per rank), never after training
CONFIG_RANKS = 0  # no launcher: see above
SHARD = "client-00003.h5"  # client 3 lives on worker 1 (rank 2) of 3 ranks: only that rank reads it


# ---------------------------------------------------------------------------------------------------
# Damaging a copy of a federation the way a user (or a file system) might

def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def edit_manifest(folder: Path, change) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest, indent=1))


def rehash(folder: Path, file: str) -> None:
    """Make the manifest's sha256 agree with the file again, so that a later check has to catch it."""
    digest = sha256_of(folder / file)
    edit_manifest(folder, lambda m: m["sha256"].__setitem__(file, digest))


def rewrite_shard(folder: Path, file: str, change) -> None:
    """Rewrite a one-client file as change(x, y) -> (x, y) returns it, and fix its sha256."""
    path = folder / file
    with h5py.File(path, "r") as f:
        x, y = f["x"][:], f["y"][:]
    x, y = change(x, y)
    path.unlink()
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=x)
        f.create_dataset("y", data=y)
    rehash(folder, file)


def one_error_line(r, expect: list[str], prefix: re.Pattern = ERROR_LINE) -> str:
    """Check what the user of a finished process (helpers.launch) saw of a mistake: exit status 2, no
    traceback, one error line holding every `expect` string and nothing else on stdout or stderr.
    Returns the output, for the messages of further checks."""
    shown = f"exit {r.returncode} after {r.seconds:.1f} s\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert r.returncode == 2, shown
    assert "Traceback" not in r.stderr, shown
    errors = [line for line in r.stderr.splitlines() if prefix.match(line)]
    assert len(errors) == 1, shown
    others = [line for line in r.stderr.splitlines() + r.stdout.splitlines() if line.strip() and line != errors[0]]
    assert not others, shown
    for part in expect:
        assert part in errors[0], f"{part!r} not in the error line\n{shown}"
    return shown


def snapshot(path: Path) -> dict:
    """`path` and every entry below it, with its bytes' checksum and modification time."""
    return {str(p.relative_to(path)): (p.is_dir() or sha256_of(p), p.stat().st_mtime_ns)
            for p in [path, *sorted(path.rglob("*"))]}


# ---------------------------------------------------------------------------------------------------
# The catalogue

@dataclass
class Case:
    args: list[str]
    expect: list[str]                 # substrings of the one error line: the field or file, and why
    ranks: int = 3
    existing_run: bool = False        # --out exists already (an earlier run, a file): must stay unchanged
    extra: list[str] = field(default_factory=lambda: ["--rounds", "1"])  # before args: args override
    out: Path | None = None           # --out, if not tmp_path/run
    env: dict | None = None           # extra environment (PYTHONPATH for a user's model)


class Ctx:
    """What a case builder may use: its tmp_path, the pristine federation, copies, other inputs."""

    def __init__(self, tmp: Path, request):
        self.tmp = tmp
        self.request = request
        self.fed = request.getfixturevalue("federation")(clients=10)
        self.out = tmp / "run"

    def broken(self) -> Path:
        """A private copy of the 10-client federation, to damage."""
        copy = self.tmp / "fed"
        shutil.copytree(self.fed, copy)
        return copy

    def two_clients(self) -> Path:
        """Another federation: the first two clients of the 10-client one, as a manifest of K = 2
        (cheaper than a data_prep run)."""
        small = self.tmp / "fed2"
        small.mkdir()
        manifest = json.loads((self.fed / "manifest.json").read_text())
        del manifest["clients"][2:]
        manifest["num_clients"] = 2
        keep = ["test.h5", *(c["file"] for c in manifest["clients"])]
        manifest["sha256"] = {f: manifest["sha256"][f] for f in keep}
        for f in keep:
            shutil.copy(self.fed / f, small / f)
        (small / "manifest.json").write_text(json.dumps(manifest, indent=1))
        return small

    def earlier_run(self) -> Path:
        """--out holding a finished 2-round run (lr 0.1) with its checkpoint."""
        shutil.copytree(self.request.getfixturevalue("finished_run"), self.out)
        return self.out

    def toml(self, text: str) -> str:
        path = self.tmp / "job.toml"
        path.write_text(text)
        return str(path)


CASES = {}
XFAIL = {}  # case name -> why it fails (a fix outside this catalogue's reach)


def case(name, xfail=None):
    def register(build):
        CASES[name] = build
        if xfail:
            XFAIL[name] = xfail
        return build
    return register


# --- the federation folder and its manifest -----------------------------------------------------

@case("federation folder missing")
def _(c):
    return Case(["--data", str(c.tmp / "nope")], ["federation", "nope", "folder not found"])


@case("federation is a file, not a folder")
def _(c):
    c.tmp.joinpath("fed.h5").write_bytes(b"")
    return Case(["--data", str(c.tmp / "fed.h5")], ["fed.h5", "not a folder"])


@case("folder without manifest.json")
def _(c):
    fed = c.broken()
    (fed / "manifest.json").unlink()
    return Case(["--data", str(fed)], ["no manifest.json"])


@case("manifest.json not JSON")
def _(c):
    fed = c.broken()
    text = (fed / "manifest.json").read_text()
    (fed / "manifest.json").write_text(text[: len(text) // 2])
    return Case(["--data", str(fed)], ["manifest.json", "not valid JSON"])


@case("manifest.json not an object")
def _(c):
    fed = c.broken()
    (fed / "manifest.json").write_text("[1, 2, 3]\n")
    return Case(["--data", str(fed)], ["manifest.json", "expected a JSON object"])


@case("manifest lacks a field")
def _(c):
    fed = c.broken()
    edit_manifest(fed, lambda m: m.pop("image_shape"))
    return Case(["--data", str(fed)], ["manifest.json", "image_shape"])


@case("manifest client entry lacks a key")
def _(c):
    fed = c.broken()
    edit_manifest(fed, lambda m: m["clients"][3].pop("file"))
    return Case(["--data", str(fed)], ["manifest.json", "client 3", "'file'"])


@case("manifest client n not an integer")
def _(c):
    fed = c.broken()
    edit_manifest(fed, lambda m: m["clients"][3].update(n="6000"))
    return Case(["--data", str(fed)], ["manifest.json", "client 3", "'n'", "'6000'"])


@case("manifest of an unknown format_version")
def _(c):
    fed = c.broken()
    edit_manifest(fed, lambda m: m.__setitem__("format_version", 3))
    return Case(["--data", str(fed)], ["manifest.json", "format_version 3", "re-run data_prep"])


@case("format_version as a string")
def _(c):
    fed = c.broken()
    edit_manifest(fed, lambda m: m.__setitem__("format_version", "1"))
    return Case(["--data", str(fed)], ["manifest.json", "format_version '1'"])


@case("empty client (n = 0 in manifest and file)")
def _(c):
    fed = c.broken()
    rewrite_shard(fed, SHARD, lambda x, y: (x[:0], y[:0]))
    edit_manifest(fed, lambda m: m["clients"][3].update(n=0, label_histogram=[0] * 10))
    return Case(["--data", str(fed)], ["manifest.json", "client 3", SHARD, "no examples"])


@case("manifest disagrees with a shard (n)")
def _(c):
    fed = c.broken()
    edit_manifest(fed, lambda m: m["clients"][3].update(n=599))
    return Case(["--data", str(fed)], [SHARD, "expected uint8 [599, 1, 28, 28]"])


@case("manifest num_classes of 2^31")
def _(c):
    fed = c.broken()
    edit_manifest(fed, lambda m: m.__setitem__("num_classes", 2**31))
    return Case(["--data", str(fed)], ["manifest.json", "'num_classes'", "2147483648"])


for _name, _key, _value, _expect in [
    ("manifest normalize std 0", "std", [0], ["'normalize'", "std", "> 0", "found 0"]),
    ("manifest normalize mean NaN", "mean", [float("nan")], ["'normalize'", "mean", "finite", "nan"]),
    ("manifest normalize std a string", "std", ["x"], ["'normalize'", "std", "'x'"]),
]:
    def _build(c, key=_key, value=_value, expect=_expect):
        fed = c.broken()
        edit_manifest(fed, lambda m: m["normalize"].__setitem__(key, value))
        return Case(["--data", str(fed)], ["manifest.json", *expect])
    case(_name)(_build)


@case("shard without a sha256 entry")
def _(c):
    fed = c.broken()
    edit_manifest(fed, lambda m: m["sha256"].pop(SHARD))
    return Case(["--data", str(fed)], [SHARD, "no sha256"])


# --- the shard files --------------------------------------------------------------------------------

@case("shard file missing")
def _(c):
    fed = c.broken()
    (fed / SHARD).unlink()
    return Case(["--data", str(fed)], [SHARD, "missing"])


@case("shard truncated (sha256 fixed: HDF5 must catch it)")
def _(c):
    fed = c.broken()
    data = (fed / SHARD).read_bytes()
    (fed / SHARD).write_bytes(data[: len(data) // 2])
    rehash(fed, SHARD)
    return Case(["--data", str(fed)], [SHARD, "cannot read as HDF5"])


@case("test set truncated (every worker reads it)")
def _(c):
    fed = c.broken()
    data = (fed / "test.h5").read_bytes()
    (fed / "test.h5").write_bytes(data[: len(data) // 2])
    rehash(fed, "test.h5")
    return Case(["--data", str(fed)], ["test.h5", "cannot read as HDF5"])


@case("shard with a flipped byte (sha256 mismatch)")
def _(c):
    fed = c.broken()
    data = bytearray((fed / SHARD).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (fed / SHARD).write_bytes(bytes(data))
    return Case(["--data", str(fed)], [SHARD, "sha256 mismatch"])


@case("shard of the wrong image shape")
def _(c):
    fed = c.broken()
    rewrite_shard(fed, SHARD, lambda x, y: (np.ascontiguousarray(x[..., :27]), y))
    return Case(["--data", str(fed)], [SHARD, "/x", "[6000, 1, 28, 27]"])


@case("shard of the wrong dtype (float32 x)")
def _(c):
    fed = c.broken()
    rewrite_shard(fed, SHARD, lambda x, y: (x.astype(np.float32), y))
    return Case(["--data", str(fed)], [SHARD, "/x", "expected uint8", "found float32"])


@case("shard with int32 labels")
def _(c):
    fed = c.broken()
    rewrite_shard(fed, SHARD, lambda x, y: (x, y.astype(np.int32)))
    return Case(["--data", str(fed)], [SHARD, "/y", "expected int64", "found int32"])


@case("labels out of range (y = 10)")
def _(c):
    fed = c.broken()

    def label_ten(x, y):
        y = y.copy()
        y[17] = 10
        return x, y
    rewrite_shard(fed, SHARD, label_ten)
    return Case(["--data", str(fed)], [SHARD, "/y", "labels must lie in 0..9", "0..10"])


# --- the launch ---------------------------------------------------------------------------------

@case("more ranks than clients")
def _(c):
    return Case(["--data", str(c.two_clients()), "--workers-per-node", "3"], ["only 2 clients", "at most 3 ranks"],
                ranks=4)


@case("device cuda:N not present")
def _(c):
    absent = f"cuda:{torch.cuda.device_count()}"  # cuda:0 on a machine without GPUs
    return Case(["--data", str(c.fed), "--device", absent], ["'device'", f"'{absent}'"])


@case("device tpu")
def _(c):
    return Case(["--data", str(c.fed), "--device", "tpu"], ["'device'", "tpu"], ranks=CONFIG_RANKS)


@case("no --data")
def _(c):
    return Case([], ["'data'", "no federation folder"], ranks=CONFIG_RANKS)


@case("unknown flag")
def _(c):
    return Case(["--data", str(c.fed), "--learning-rate", "0.1"], ["unrecognized arguments: --learning-rate"],
                ranks=CONFIG_RANKS)


# --- config values ------------------------------------------------------------------------------

def value_case(flag, value, expect, ranks=CONFIG_RANKS):
    return lambda c: Case(["--data", str(c.fed), flag, value], expect, ranks=ranks)


for _name, _flag, _value, _expect, *_ranks in [
    ("unknown model", "--model", "resnet", ["'model'", "unknown model 'resnet'"], 3),
    ("model typo", "--model", "cnnn", ["'model'", "did you mean 'cnn'"]),
    ("C = 1.5", "--fraction", "1.5", ["'fraction'", "[0, 1]", "1.5"], 3),
    ("C = -0.1", "--fraction", "-0.1", ["'fraction'", "[0, 1]", "-0.1"]),
    ("C = nan", "--fraction", "nan", ["'fraction'", "nan"]),
    ("E = 0", "--epochs", "0", ["'epochs'", "at least 1"]),
    ("E = 1.5", "--epochs", "1.5", ["'epochs'", "expected int", "1.5"]),
    ("E = 10^9 (48 TB of example orders)", "--epochs", "1000000000", ["'epochs'", "GiB of example orders"], 3),
    ("B = -5", "--batch-size", "-5", ["'batch_size'", "-5"]),
    ("B not a number", "--batch-size", "ten", ["'batch_size'", "'ten'"]),
    ("lr = 0", "--lr", "0", ["'lr'", "> 0", "got 0"]),
    ("lr = -0.1", "--lr", "-0.1", ["'lr'", "> 0", "-0.1"]),
    ("lr = nan", "--lr", "nan", ["'lr'", "finite", "nan"]),
    ("lr = inf", "--lr", "inf", ["'lr'", "finite", "inf"]),
    ("seed = -1", "--seed", "-1", ["'seed'", "0..9223372036854775807"]),
    ("seed = 2^64", "--seed", str(2**64), ["'seed'", str(2**64)]),
    ("rounds = -1", "--rounds", "-1", ["'rounds'", ">= 0"]),
    ("eval_every = 0", "--eval-every", "0", ["'eval_every'", ">= 1"]),
    ("threads = -2", "--threads", "-2", ["'threads'", "0..4096"]),
    ("lr = 1e39 (beyond float32)", "--lr", "1e39", ["'lr'", "at most 1e+06", "1e+39"]),
    ("precision float16", "--precision", "float16", ["'precision'", "float32, float64"]),
    ("stack_clients = -1", "--stack-clients", "-1", ["'stack_clients'", ">= 0"]),
    ("setup_timeout = -1", "--setup-timeout", "-1", ["'setup_timeout'", ">= 0"]),
    ("lr_decay = 1.5", "--lr-decay", "1.5", ["'lr_decay'", "(0, 1]"]),
    ("lr_decay = 0", "--lr-decay", "0", ["'lr_decay'", "(0, 1]"]),
    ("client_momentum = 1 (v never decays)", "--client-momentum", "1", ["'client_momentum'", "[0, 1)", "got 1.0"], 3),
    ("client_momentum = -0.1", "--client-momentum", "-0.1", ["'client_momentum'", "[0, 1)", "-0.1"]),
    ("client_momentum = nan", "--client-momentum", "nan", ["'client_momentum'", "[0, 1)", "nan"]),
    ("weight_decay = -1", "--weight-decay", "-1", ["'weight_decay'", "[0, 1000]", "-1.0"]),
    ("weight_decay = inf", "--weight-decay", "inf", ["'weight_decay'", "finite", "inf"]),
    ("weight_decay = 1e4 (the decay alone overshoots 0)", "--weight-decay", "1e4", ["'weight_decay'", "[0, 1000]"]),
    ("server_tau = 1e200 (the adaptive step vanished)", "--server-tau", "1e200", ["'server_tau'", "(0, 1]"]),
    ("on_bad_update unknown", "--on-bad-update", "ignore", ["'on_bad_update'", "abort, skip"]),
    ("eval_clients = 1.5", "--eval-clients", "1.5", ["'eval_clients'", "[0, 1]", "1.5"]),
    ("eval_clients = nan", "--eval-clients", "nan", ["'eval_clients'", "[0, 1]", "nan"]),
    ("client_speed unknown", "--client-speed", "fast", ["'client_speed'", "constant, lognormal", ".csv", "'fast'"]),
    ("speed_sigma = nan", "--speed-sigma", "nan", ["'speed_sigma'", "finite", ">= 0", "nan"]),
    ("speed_sigma = -1", "--speed-sigma", "-1", ["'speed_sigma'", ">= 0", "-1.0"]),
    ("step_seconds = 0", "--step-seconds", "0", ["'step_seconds'", "> 0", "got 0"]),
    ("bandwidth = inf", "--bandwidth", "inf", ["'bandwidth'", "finite", "inf"]),
    ("latency = -0.1", "--latency", "-0.1", ["'latency'", ">= 0", "-0.1"]),
    ("deadline = -5", "--deadline", "-5", ["'deadline'", ">= 0", "-5.0"]),
    ("stragglers = 1 (no client completes)", "--stragglers", "1", ["'stragglers'", "[0, 1)", "1.0"]),
    ("stragglers with E = 1", "--stragglers", "0.5", ["'stragglers'", "epochs >= 2", "E = 1"]),
    ("execution unknown", "--execution", "parallel", ["'execution'", "sync, async", "'parallel'"]),
    ("staleness unknown", "--staleness", "linear", ["'staleness'", "sqrt, none", "'linear'"]),
    ("availability = 0", "--availability", "0", ["'availability'", "(0, 1]", "got 0"]),
    ("availability = nan", "--availability", "nan", ["'availability'", "(0, 1]", "nan"]),
]:
    case(_name)(value_case(_flag, _value, _expect, *_ranks))


# --- asynchronous execution (fedmpi/schedule.py) ---------------------------------------------------

for _name, _flags, _expect in [
    ("async buffer_size > concurrency", ["--concurrency", "4", "--buffer-size", "5"],
     ["'buffer_size'", "1..concurrency (4)", "got 5"]),
    ("async concurrency = 0", ["--concurrency", "0"], ["'concurrency'", ">= 1", "got 0"]),
    ("async concurrency > K", ["--concurrency", "11", "--buffer-size", "2"], ["'concurrency'", "11", "only 10"]),
    ("async with stragglers", ["--stragglers", "0.5", "--epochs", "2"], ["'stragglers'", "synchronous rounds"]),
    ("async with a deadline", ["--deadline", "10"], ["'deadline'", "synchronous rounds"]),
    ("async with SCAFFOLD", ["--algorithm", "scaffold"], ["'execution'", "SCAFFOLD cannot run asynchronously"]),
]:
    case(_name)(lambda c, flags=_flags, expect=_expect:
                Case(["--data", str(c.fed), "--execution", "async", *flags], expect))


# --- the clients' simulated systems (fedmpi/system.py): a CSV of per-client speeds ----------------

for _name, _text, _expect in [
    ("speeds CSV without a speed column", "client,rate\n0,1\n", ["header", "client and speed", "'rate'"]),
    ("speeds CSV with a negative speed", "client,speed\n0,1\n1,-2\n", ["line 3", "speed", "> 0", "'-2'"]),
    ("speeds CSV with a NaN latency", "client,speed,latency\n0,1,nan\n", ["line 2", "latency", ">= 0", "'nan'"]),
    ("speeds CSV with a client beyond K", "client,speed\n10,1\n", ["line 2", "client 10", "0..9"]),
    ("speeds CSV lists a client twice", "client,speed\n0,1\n0,2\n", ["line 3", "client 0", "twice"]),
    ("speeds CSV leaves clients out", "client,speed\n0,1\n1,2\n", ["8 client(s)", "no row", "first 2"]),
    ("speeds CSV not UTF-8", "client,speed\n0,\udcff\n", ["cannot read", "CSV"]),
]:
    def _speeds_case(c, text=_text, expect=_expect):
        path = c.tmp / "speeds.csv"
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
        return Case(["--data", str(c.fed), "--client-speed", str(path)], ["'client_speed'", "speeds.csv", *expect])
    case(_name)(_speeds_case)


for _name, _text, _expect in [
    ("trace CSV with another header", "client,from,to\n0,1,2\n", ["header client,start,end", "'from'"]),
    ("trace CSV with an interval ending before it starts", "client,start,end\n0,5,2\n",
     ["line 2", "0 <= start < end", "5, 2"]),
    ("trace CSV with a client beyond K", "client,start,end\n0,0,1\n12,0,1\n", ["line 3", "client 12", "0..9"]),
    ("trace CSV with text for a number", "client,start,end\n0,soon,1\n", ["line 2", "must be numbers"]),
]:
    def _trace_case(c, text=_text, expect=_expect):
        path = c.tmp / "trace.csv"
        path.write_text(text)
        return Case(["--data", str(c.fed), "--availability-trace", str(path)],
                    ["'availability_trace'", "trace.csv", *expect])
    case(_name)(_trace_case)


@case("async with a trace that runs dry")
def _(c):
    path = c.tmp / "trace.csv"
    path.write_text("client,start,end\n" + "".join(f"{k},0,1\n" for k in range(10)))  # all offline after 1 s
    return Case(["--data", str(c.fed), "--availability-trace", str(path), "--execution", "async", "--concurrency",
                 "4", "--buffer-size", "3", "--rounds", "5"],
                ["'availability_trace'", "trace.csv", "no client online after virtual time", "server update 2 of 5",
                 "buffer of 3", "extend the trace or lower rounds"])


@case("DP with availability")
def _(c):
    return Case(["--data", str(c.fed), "--dp-clip", "1", "--dp-noise-multiplier", "1", "--availability", "0.5"],
                ["'dp_clip'", "availability"])


@case("speeds CSV missing")
def _(c):
    return Case(["--data", str(c.fed), "--client-speed", str(c.tmp / "none.csv")],
                ["'client_speed'", "none.csv", "not found"])


# --- federated evaluation (eval_clients, data_prep --client-test-fraction) -------------------------

@case("eval_clients on a federation made without client test sets")
def _(c):
    return Case(["--data", str(c.fed), "--eval-clients", "0.5"],
                ["'eval_clients'", str(c.fed), "no client test sets", "--client-test-fraction"], ranks=CONFIG_RANKS)


def with_client_tests(c) -> Path:
    """A private copy of the 10-client federation made with --client-test-fraction 0.2, to damage."""
    copy = c.tmp / "fed-ct"
    shutil.copytree(c.request.getfixturevalue("federation")(clients=10, client_test_fraction=0.2), copy)
    return copy


@case("manifest client entry lacks test_n")
def _(c):
    fed = with_client_tests(c)
    edit_manifest(fed, lambda m: m["clients"][3].pop("test_n"))
    return Case(["--data", str(fed)], ["manifest.json", "client 3", "'test_n'"], ranks=CONFIG_RANKS)


@case("a client's own test set of the wrong shape (read at set-up by its worker)")
def _(c):
    fed = with_client_tests(c)
    path = fed / SHARD
    with h5py.File(path, "r+") as f:
        x = f["test_x"][:]
        del f["test_x"]
        f.create_dataset("test_x", data=np.ascontiguousarray(x[..., :27]))
    rehash(fed, SHARD)
    return Case(["--data", str(fed), "--eval-clients", "1"], [SHARD, "/test_x", "[1200, 1, 28, 27]"])


# --- a user's model ("module:function", tests/user_models.py on PYTHONPATH) ---------------------

USER_CODE = {"PYTHONPATH": str(Path(__file__).parent)}

# ranks: a mistake that every rank meets alike needs one process; one that a single rank meets, or whose
# single line must come from all of them agreeing, needs three
for _name, _model, _expect, _ranks in [
    ("user model module not importable", "no_such_module:net", ["'model'", "cannot import no_such_module",
                                                                  "PYTHONPATH"], CONFIG_RANKS),
    ("user model function missing", "user_models:nope", ["'model'", "user_models has no function nope"],
     CONFIG_RANKS),
    ("user model builder raises", "user_models:broken_net", ["'model'", "broken_net", "needs 3 channels"],
     CONFIG_RANKS),
    ("user model is no function", "user_models:not_a_model", ["'model'", "no function not_a_model"], CONFIG_RANKS),
    ("user model returns no nn.Module", "user_models:layer_list", ["'model'", "returned a list", "nn.Module"],
     CONFIG_RANKS),
    ("user model calls sys.exit on rank 2 only", "user_models:exits_on_rank_2", ["'model'", "exits_on_rank_2",
                                                                                "SystemExit: missing dep"], 3),
    ("user model gives 5 logits on 10 classes", "user_models:five_logits", ["'model'", "5 logits", "10 classes"],
     CONFIG_RANKS),
    ("user model calls sys.exit on every rank", "user_models:exits", ["'model'", "SystemExit: missing dep"], 3),
    ("user model raises KeyboardInterrupt on rank 2 only", "user_models:interrupted_on_rank_2",
     ["rank 2 stopped while building the model", "KeyboardInterrupt"], 3),
    ("model name neither built-in nor module:function", "my model", ["'model'", "unknown model 'my model'",
                                                                     "package.module:function"], CONFIG_RANKS),
]:
    case(_name)(lambda c, m=_model, e=_expect, r=_ranks: Case(["--data", str(c.fed), "--model", m], e, ranks=r,
                                                             env=USER_CODE))


@case("SCAFFOLD's control variates beyond the node's memory (they were allocated on every rank)")
def _(c):
    """A model whose 101 control variates (K = 100) take twice this machine's available memory in float64."""
    with open("/proc/meminfo") as f:
        available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    hidden = 2 * available // (101 * 8 * 795)  # parameters per hidden unit on MNIST: 784 + 1 + 10
    fed = c.request.getfixturevalue("federation")()
    return Case(["--data", str(fed), "--model", "user_models:wide_net", "--algorithm", "scaffold"],
                ["'algorithm'", "control variates", "GiB on rank 0", "available"], ranks=0,
                env={**USER_CODE, "HIDDEN": str(hidden)})


# --- the TOML file ------------------------------------------------------------------------------

@case("TOML file missing")
def _(c):
    return Case(["--config", str(c.tmp / "nope.toml")], ["nope.toml", "not found"], ranks=CONFIG_RANKS)


@case("TOML file is a folder")
def _(c):
    return Case(["--config", str(c.tmp)], [str(c.tmp), "not a file"], ranks=CONFIG_RANKS)


@case("TOML file not UTF-8")
def _(c):
    path = c.tmp / "job.toml"
    path.write_bytes(b'data = "fed"\nlr = \xff\xfe\n')
    return Case(["--config", str(path)], ["job.toml", "not UTF-8"], ranks=CONFIG_RANKS)


@case("TOML syntax error")
def _(c):
    path = c.toml(f'data = "{c.fed}"\nepochs 5\n')
    return Case(["--config", path], ["job.toml", "TOML syntax error", "line 2"], ranks=CONFIG_RANKS)


@case("TOML unknown key with a suggestion")
def _(c):
    path = c.toml(f'data = "{c.fed}"\nepoch = 5\n')
    return Case(["--config", path], ["job.toml", "unknown key 'epoch'", "did you mean 'epochs'"], ranks=3)


@case("TOML unknown key without a suggestion")
def _(c):
    path = c.toml(f'data = "{c.fed}"\nmomentum = 0.9\n')
    return Case(["--config", path], ["job.toml", "unknown key 'momentum'"], ranks=CONFIG_RANKS)


@case("TOML value of the wrong type")
def _(c):
    path = c.toml(f'data = "{c.fed}"\nepochs = "five"\n')
    return Case(["--config", path], ["'epochs'", "expected int", "'five'"], ranks=CONFIG_RANKS)


@case("TOML lr = 1e308")
def _(c):
    path = c.toml(f'data = "{c.fed}"\nlr = 1e308\n')
    return Case(["--config", path], ["'lr'", "at most"], ranks=CONFIG_RANKS)


@case("TOML threads = 1e30")
def _(c):
    path = c.toml(f'data = "{c.fed}"\nthreads = 1e30\n')
    return Case(["--config", path], ["'threads'", "0..4096"], ranks=CONFIG_RANKS)


@case("OMP_NUM_THREADS of 20 digits")
def _(c):
    return Case(["--data", str(c.fed)], ["OMP_NUM_THREADS=99999999999999999999", "1 to 4096"],
                env={"OMP_NUM_THREADS": "99999999999999999999"})


@case("--out not UTF-8")
def _(c):
    return Case(["--data", str(c.fed)], ["'out'", "not valid UTF-8"], out=c.tmp / "run-\udcff", ranks=0)


@case("TOML lr = nan")
def _(c):
    path = c.toml(f'data = "{c.fed}"\nlr = nan\n')
    return Case(["--config", path], ["'lr'", "finite"], ranks=CONFIG_RANKS)


# --- an existing run folder ---------------------------------------------------------------------

EARLIER_RUN = ["--rounds", "2", "--lr", "0.1", "--batch-size", "0", "--threads", "1"]  # see finished_run


@case("existing run folder without --resume/--overwrite")
def _(c):
    c.earlier_run()
    return Case(["--data", str(c.fed)], ["run folder", str(c.out), "--resume", "--overwrite"],
                existing_run=True)


@case("resume with another lr")
def _(c):
    c.earlier_run()
    return Case(["--data", str(c.fed), "--lr", "0.05", "--resume"],
                ["checkpoint.h5", "another config", "lr 0.1 -> 0.05"], existing_run=True,
                extra=EARLIER_RUN)


@case("resume with another stack_clients (a CPU CNN stacked rounds otherwise)")
def _(c):
    c.earlier_run()
    return Case(["--data", str(c.fed), "--stack-clients", "2", "--resume"],
                ["checkpoint.h5", "another config", "stack_clients 0 -> 2"], existing_run=True,
                extra=EARLIER_RUN)


@case("resume with another federation")
def _(c):
    c.earlier_run()
    small = c.two_clients()
    return Case(["--data", str(small), "--resume"], ["checkpoint.h5", "another federation", str(small)],
                existing_run=True, extra=EARLIER_RUN)


@case("resume a checkpoint written by an older fedmpi (format 1)")
def _(c):
    c.earlier_run()
    with h5py.File(c.out / "checkpoint.h5", "r+") as f:
        f.attrs["format"] = 1
    return Case(["--data", str(c.fed), "--resume"],
                ["checkpoint.h5", "format 1 is not supported", "fedmpi that started it", "--overwrite"],
                existing_run=True, extra=EARLIER_RUN)


# --out problems are rank 0's alone; one process suffices (the agreement is the case above's)

@case("--out is an existing file")
def _(c):
    c.out.write_text("not a run folder\n")
    return Case(["--data", str(c.fed)], [str(c.out), "not a folder"], existing_run=True, ranks=0)


@case("--out is an existing file, with --overwrite")
def _(c):
    c.out.write_text("not a run folder\n")
    return Case(["--data", str(c.fed), "--overwrite"], [str(c.out), "not a folder"], existing_run=True, ranks=0)


def folder_that_is_no_run(flag):
    def build(c):
        c.out.mkdir()
        (c.out / "thesis.tex").write_text("months of work\n")
        return Case(["--data", str(c.fed), flag], [str(c.out), "not a fedmpi run folder"],
                    existing_run=True, ranks=0)
    return build


for _flag in ("--overwrite", "--resume"):
    case(f"{_flag} of a folder that is no run folder")(folder_that_is_no_run(_flag))


@case("--out whose .fedmpi-run marker is a symbolic link")
def _(c):
    (c.tmp / "precious.txt").write_text("a file elsewhere that the lock record must not overwrite\n")
    c.out.mkdir()
    (c.out / ".fedmpi-run").symlink_to(c.tmp / "precious.txt")
    return Case(["--data", str(c.fed), "--resume"], [".fedmpi-run", "symbolic link"], existing_run=True, ranks=0)


@case("--out inside a file")
def _(c):
    blocker = c.tmp / "results"
    blocker.write_text("a file where the run folder's parent should be\n")
    return Case(["--data", str(c.fed)], [str(blocker), "is a file"], out=blocker / "run", ranks=0)


# ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_run(federation, tmp_path_factory):
    """A 2-round run with lr 0.1 on the 10-client federation (B = ∞: quick); cases copy it before using it."""
    out = tmp_path_factory.mktemp("earlier") / "run"
    train(0, federation(clients=10), out, *EARLIER_RUN, timeout=120)  # any rank count makes the same run
    assert (out / "checkpoint.h5").is_file()
    return out


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=XFAIL[name]))
                                  if name in XFAIL else name for name in CASES])
def test_bad_input_gives_one_line_naming_it_and_writes_nothing(name, tmp_path, request):
    c = Ctx(tmp_path, request)
    spec = CASES[name](c)
    out = spec.out or c.out
    watched = c.out if spec.existing_run else None  # what existed before and must not change
    before = snapshot(watched) if watched else None
    assert not out.exists() or spec.existing_run

    r = launch(spec.ranks, [*spec.extra, *spec.args, "--out", str(out)], timeout=TIMEOUT_S, env=spec.env)

    shown = one_error_line(r, spec.expect)
    assert r.seconds < FAST_S, f"a user error took {r.seconds:.1f} s\n{shown}"
    if watched:
        assert snapshot(watched) == before, f"{watched} was changed"
    else:
        assert not out.exists(), f"{out} was written\n{shown}"


# ---------------------------------------------------------------------------------------------------
# data_prep: the mistakes its own tests (tests/test_data_prep.py) leave out

DATA_PREP_ERROR = re.compile("^data_prep: error: ")
SYNTHETIC = ["--dataset", "synthetic", "--model-skew", "1", "--feature-skew", "1"]
DATA_PREP_CASES = {
    "negative seed": (lambda tmp: (["--seed", "-1"], tmp / "fed"), "--seed -1: must be >= 0"),
    **{f"--unbalance {v}": (lambda tmp, v=v: (["--unbalance", v], tmp / "fed"), "must lie in 0..10")
       for v in ("nan", "inf", "1000", "-1")},
    "--out inside a file": (lambda tmp: ([], tmp / "results" / "fed"), "is a file"),
    # issue 25: 0 clients made 100, the sizes' parameters crashed the int64 cast of their draws, and a
    # feature skew of 1e300 wrote -inf features
    **{name: (lambda tmp, flags=flags: (flags, tmp / "fed"), expected) for name, flags, expected in [
        ("--clients 0", ["--clients", "0"], "--clients 0: need at least 1 client"),
        ("synthetic --clients 0", [*SYNTHETIC, "--clients", "0"], "--clients 0: need at least 1 client"),
        ("synthetic --size-mu nan", [*SYNTHETIC, "--size-mu", "nan"], "--size-mu nan: must be a finite number"),
        ("synthetic --size-mu inf", [*SYNTHETIC, "--size-mu", "inf"], "--size-mu inf: must be a finite number"),
        ("synthetic --size-mu 1e300 uncapped", [*SYNTHETIC, "--size-mu", "1e300", "--max-size", "0"],
         "a client would get inf examples"),
        ("synthetic --size-sigma 1e300 uncapped", [*SYNTHETIC, "--size-sigma", "1e300", "--max-size", "0"],
         "a client would get inf examples"),
        ("synthetic --feature-skew 1e300", [*SYNTHETIC, "--feature-skew", "1e300"],
         "--feature-skew 1e+300: must be at most 1000"),
        *((f"--client-test-fraction {v}", ["--client-test-fraction", v], "must lie strictly between 0 and 1")
          for v in ("0", "1", "nan")),
    ]},
}


@pytest.mark.parametrize("name", list(DATA_PREP_CASES))
def test_data_prep_bad_input_gives_one_error_line_and_writes_nothing(name, tmp_path):
    build, expected = DATA_PREP_CASES[name]
    (tmp_path / "results").write_text("a file where a folder should be\n")
    args, out = build(tmp_path)
    r = launch(0, ["--clients", "10", *args, "--out", str(out)], module="data_prep", timeout=TIMEOUT_S)
    shown = one_error_line(r, [expected], DATA_PREP_ERROR)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"], shown


# ---------------------------------------------------------------------------------------------------
# Paths no file system takes, and file systems that are full (issue 25)

@pytest.mark.parametrize("module", ["fedmpi", "fedmpi.sweep"])
def test_a_nul_byte_in_a_toml_path_is_one_line(module, federation, tmp_path):
    """TOML writes a NUL byte as "\\u0000"; no argv can hold one, so only a file brings it."""
    path = tmp_path / "job.toml"
    if module == "fedmpi":
        path.write_text(f'data = "{federation(clients=10)}"\nout = "{tmp_path}/run\\u0000x"\n')
        args, prefix = ["--config", str(path)], ERROR_LINE
    else:
        path.write_text(f'out = "{tmp_path}/sweep\\u0000x"\n[base]\ndata = "{federation(clients=10)}"\n')
        args, prefix = [str(path), "--list"], re.compile("^fedmpi.sweep: error: ")
    r = launch(0, args, module=module, timeout=TIMEOUT_S)
    one_error_line(r, ["'out'", "NUL byte"], prefix)
    assert os.listdir(tmp_path) == ["job.toml"]


@pytest.fixture
def small_disk(tmp_path):
    """small_disk(size=..., nr_inodes=...) -> a folder on a tmpfs of its own, unmounted after the test: a
    real file system to fill. Mounting needs root (CAP_SYS_ADMIN); without it the test is skipped."""
    mounted = []

    def mount(**options) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        opts = ",".join(f"{k}={v}" for k, v in options.items())
        try:
            subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "fedmpi-test", str(where)], check=True,
                           capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as e:
            pytest.skip(f"a full file system needs a small tmpfs, and this process cannot mount one (root "
                        f"only): {getattr(e, 'stderr', None) or e}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", str(where)], check=True)


def fill(folder: Path) -> None:
    """Write a file in `folder` until its file system is full."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, bytes(1 << 16))
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    finally:
        os.close(fd)


def test_a_full_disk_when_a_job_starts_is_one_line_naming_the_lock_file(small_disk, federation):
    """Rank 0 writes who holds the run folder's lock when it claims the folder (runfolder.announce): on a full
    disk that was an OSError traceback, exit 1, with the folder left behind."""
    disk = small_disk(size="64k")
    fill(disk)  # a folder and an empty file take inodes, not blocks: only the lock record cannot be written
    r = launch(0, ["--data", str(federation(clients=10)), "--out", str(disk / "run")], timeout=TIMEOUT_S)
    one_error_line(r, [f"{disk / 'run' / MARKER}: cannot write", "No space left on device"])
    assert sorted(os.listdir(disk)) == ["filler"]


def test_data_prep_out_of_inodes_mid_write_gives_one_error_line_and_leaves_nothing(small_disk):
    disk = small_disk(size="16m", nr_inodes=8)  # room for test.h5 and a few of the 20 client files
    r = launch(0, [*SYNTHETIC, "--clients", "20", "--out", str(disk / "fed")], module="data_prep",
               timeout=TIMEOUT_S)
    shown = one_error_line(r, [f"--out {disk / 'fed'}: cannot write client-", "No space left on device"],
                           DATA_PREP_ERROR)
    assert os.listdir(disk) == [], shown


def test_scaling_sh_keeps_an_out_with_a_space_in_one_piece(federation, tmp_path):
    """jobs/scaling.sh passed each run's --out to fedmpi unquoted: "a b" became two arguments."""
    config = tmp_path / "tiny.toml"
    config.write_text(f'data = "{federation(clients=10)}"\nrounds = 1\nbatch_size = 0\n')
    study = tmp_path / "a b" / "study"
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # this python, and its mpiexec
    script = Path(__file__).parents[1] / "jobs" / "scaling.sh"
    proc = subprocess.Popen([script, "strong", "--local", "--ranks", "1", "--out", study, config], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PATH": path},
                            start_new_session=True)
    out, err = finish(proc, timeout=120)
    assert proc.returncode == 0, f"{out}\n{err}"
    assert sorted(os.listdir(study)) == ["p001", "p001.log", "results.csv", "scaling.png"], f"{out}\n{err}"
    assert (study / "p001" / "summary.json").is_file()
