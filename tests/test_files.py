"""Files a run writes and reads: atomic, checked when read, and one line naming the file when the disk says no.

Each case reproduces a defect of fedmpi 16e5e7d (issue 13): a checkpoint with flipped bits resumed
silently; a torn summary.json crashed the sweep; a damaged metrics line crashed --resume and plot;
a full disk gave tracebacks and left a checkpoint.h5.tmp behind; a read-only --out was found only
after setup; a rerun of the same data_prep command made every checkpoint "another federation";
data_prep stopped by SIGTERM left its half-written folder; TOML `batch_size = inf` was refused.
Full and read-only disks are real tmpfs mounts (skipped where this machine may not mount).
"""
from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess

import h5py
import numpy as np
import pytest

from helpers import comparable, final_weights, finish, launch, start, train, wait_until

FLAGS = ["--rounds", "4", "--checkpoint-every", "1", "--threads", "1", "--seed", "6", "--batch-size", "50",
         "--fraction", "0.2"]



def one_error_line(r, *parts):
    shown = f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert r.returncode == 2, shown
    assert "Traceback" not in r.stderr, shown
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, shown
    for part in parts:
        assert part in errors[0], shown


@pytest.fixture(scope="module")
def uninterrupted(federation, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    train(0, federation(clients=10), out, *FLAGS)
    return out


@pytest.fixture(scope="module")
def stopped_at_2(federation, tmp_path_factory):
    """The same run stopped after round 2 (its checkpoint is round 2's)."""
    out = tmp_path_factory.mktemp("half") / "run"
    train(0, federation(clients=10), out, *FLAGS, "--rounds", "2")
    return out


def copy_of(run, tmp_path):
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def test_a_checkpoint_with_flipped_bits_is_refused(stopped_at_2, federation, tmp_path):
    run = copy_of(stopped_at_2, tmp_path)
    with h5py.File(run / "checkpoint.h5", "r+") as f:
        w = f["weights"][:]
        w.view(np.uint32)[1000] ^= 0x1  # the lowest mantissa bit of one weight
        f["weights"][:] = w
    r = launch(0, ["--data", str(federation(clients=10)), "--out", str(run), *FLAGS, "--resume"], timeout=60)
    one_error_line(r, "checkpoint.h5", "checksum mismatch")


def test_a_torn_last_metrics_line_is_dropped_with_a_notice_and_resume_matches(stopped_at_2, uninterrupted,
                                                                              federation, tmp_path):
    run = copy_of(stopped_at_2, tmp_path)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"round": 3, "clients": [1, ')  # a stop in the middle of a write
    r = train(0, federation(clients=10), run, *FLAGS, "--resume")
    assert "line 4 was torn by a stop mid-write; dropped" in r.stdout, r.stdout
    np.testing.assert_array_equal(final_weights(run), final_weights(uninterrupted))
    assert comparable(run) == comparable(uninterrupted)


def test_a_damaged_metrics_line_is_refused_naming_it(stopped_at_2, federation, tmp_path):
    run = copy_of(stopped_at_2, tmp_path)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][:-5]  # a line cut short, followed by intact ones
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    r = launch(0, ["--data", str(federation(clients=10)), "--out", str(run), *FLAGS, "--resume"], timeout=60)
    one_error_line(r, "metrics.jsonl", "line 2 is damaged")
    lines[1] = lines[0].replace('"round": 0', '"round": 1').replace('"test_accuracy": 0.', '"test_accuracy": 99.')
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")  # a digit changed: 990 %
    r = launch(0, ["--data", str(federation(clients=10)), "--out", str(run), *FLAGS, "--resume"], timeout=60)
    one_error_line(r, "metrics.jsonl", "line 2 is damaged", "outside [0, 1]")
    plot = launch(0, [str(run), "-o", str(tmp_path / "a.png")], module="fedmpi.plot", timeout=60)
    assert plot.returncode == 2 and "line 2 is damaged" in plot.stderr and "Traceback" not in plot.stderr


def test_metrics_that_lack_rounds_before_the_checkpoint_are_refused(stopped_at_2, federation, tmp_path):
    """Records are fsynced before each checkpoint, so a crash cannot leave the checkpoint ahead of them;
    a file cut by hand (or by a crash under a fedmpi that did not sync yet) is refused, not continued
    with a gap that summary.json would be computed over."""
    run = copy_of(stopped_at_2, tmp_path)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines][:2] == [0, 1]
    (run / "metrics.jsonl").write_text(lines[0] + "\n")  # round 0 only; the checkpoint is round 2's
    r = launch(0, ["--data", str(federation(clients=10)), "--out", str(run), *FLAGS, "--resume"], timeout=60)
    one_error_line(r, "metrics.jsonl lacks the records of round 1 before the checkpoint's round 2")


def test_a_torn_summary_does_not_stop_the_sweep(uninterrupted, federation, tmp_path):
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(f'out = "{tmp_path / "out"}"\nranks = 1\n[base]\ndata = "{federation(clients=10)}"\n'
                     + "".join(f"{k.strip('-').replace('-', '_')} = {v}\n" for k, v in zip(FLAGS[::2], FLAGS[1::2]))
                     + "[grid]\nlr = [0.1]\n")
    assert launch(0, [str(sweep)], module="fedmpi.sweep", timeout=120).returncode == 0
    (tmp_path / "out" / "run" / "summary.json").write_text('{"rounds": 4, "fin')  # torn by an older fedmpi
    listed = launch(0, [str(sweep), "--list"], module="fedmpi.sweep", timeout=60)
    assert listed.returncode == 0 and "\tpartial\t" in listed.stdout, listed.stdout + listed.stderr
    again = launch(0, [str(sweep)], module="fedmpi.sweep", timeout=120)
    assert again.returncode == 0 and "run: resuming" in again.stdout, again.stdout + again.stderr
    assert json.loads((tmp_path / "out" / "run" / "summary.json").read_text())["rounds"] == 4


def test_the_same_data_prep_command_again_resumes_the_checkpoints_of_the_first(federation, run_data_prep,
                                                                               uninterrupted, tmp_path):
    """A federation is identified by its data, not by when or by which command line it was made."""
    fed = federation(clients=10)
    again = tmp_path / "fed"
    done = run_data_prep("--partition", "iid", "--clients", "10", "--seed", "0", "--out", again)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "run"
    train(0, fed, run, *FLAGS, "--rounds", "2")
    train(0, again, run, *FLAGS, "--resume")
    np.testing.assert_array_equal(final_weights(run), final_weights(uninterrupted))


def test_batch_size_inf_or_beyond_every_client_is_the_whole_local_set(federation, tmp_path):
    """README: batch_size = inf (B = ∞). In TOML `inf` is a float; it used to be refused as "expected int"."""
    config = tmp_path / "job.toml"
    config.write_text(f'data = "{federation(clients=10)}"\nout = "{tmp_path / "inf"}"\nbatch_size = inf\n'
                      'rounds = 1\nthreads = 1\n')
    assert launch(0, ["--config", str(config)], timeout=60).returncode == 0
    train(0, federation(clients=10), tmp_path / "zero", "--batch-size", "0", "--rounds", "1", "--threads", "1")
    np.testing.assert_array_equal(final_weights(tmp_path / "inf"), final_weights(tmp_path / "zero"))
    # A B beyond the largest client (6,000 examples) is B = ∞ too; its steps were padded to B rows
    # (B = 10^5 took 6.9 GB; 10^7 would need 30 GB).
    train(0, federation(clients=10), tmp_path / "huge", "--batch-size", str(10**7), "--rounds", "1", "--threads", "1")
    np.testing.assert_array_equal(final_weights(tmp_path / "huge"), final_weights(tmp_path / "zero"))


def test_data_prep_stopped_by_sigterm_leaves_no_half_written_folder(tmp_path):
    """3000 clients: about 2 s of writing files, in which the signal arrives."""
    proc = start(0, ["--clients", "3000", "--out", str(tmp_path / "fed")], module="data_prep")
    wait_until(proc, lambda: any(p.name.startswith(".fed.partial-") for p in tmp_path.iterdir()),
               "data_prep's partial folder")
    proc.send_signal(signal.SIGTERM)
    finish(proc, 60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []


# ---- disks that say no: real tmpfs mounts --------------------------------------------------------

@contextlib.contextmanager
def tmpfs(path, size, readonly=False):
    path.mkdir()
    options = f"size={size}" + (",ro" if readonly else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def test_a_full_disk_is_one_line_naming_the_file_and_the_last_checkpoint_stays_usable(uninterrupted, federation,
                                                                                      tmp_path):
    """The 2NN's checkpoint is 1.6 MB (its weights and the best round's): on a 2.4 MB disk the first fits, the
    second (written beside it) not."""
    fed = federation(clients=10)
    with tmpfs(tmp_path / "disk", "2400k") as disk:
        r = launch(0, ["--data", str(fed), "--out", str(disk / "run"), *FLAGS], timeout=120)
        one_error_line(r, "checkpoint.h5", "No space left on device")
        assert sorted(p.name for p in (disk / "run").iterdir()) == \
            [".fedmpi-run", "checkpoint.h5", "config.toml", "metrics.jsonl"]  # no temporary file left
        shutil.copytree(disk / "run", tmp_path / "moved")
    r = train(0, fed, tmp_path / "moved", *FLAGS, "--resume")
    assert "resuming at round 1" in r.stdout
    np.testing.assert_array_equal(final_weights(tmp_path / "moved"), final_weights(uninterrupted))


def test_a_read_only_out_is_refused_before_anything_else(federation, tmp_path):
    with tmpfs(tmp_path / "ro", "1m", readonly=True) as ro:
        r = launch(3, ["--data", str(federation(clients=10)), "--out", str(ro / "run"), *FLAGS], timeout=60)
        one_error_line(r, str(ro / "run"), "not writable")
        assert r.seconds < 20


def test_overwrite_of_a_symlinked_run_folder_keeps_the_link(uninterrupted, federation, tmp_path):
    real = copy_of(uninterrupted, tmp_path)
    link = tmp_path / "latest"
    link.symlink_to(real)
    train(0, federation(clients=10), link, *FLAGS, "--overwrite")
    assert link.is_symlink() and link.resolve() == real
    np.testing.assert_array_equal(final_weights(real), final_weights(uninterrupted))
