"""Run folders: which folders fedmpi may change, and one job per folder at a time.

Every run folder fedmpi makes holds a marker file, `.fedmpi-run`. `--resume`
and `--overwrite` only ever touch a folder that holds it (or an empty one), so
a mistyped `--out` can never delete or change a user's files. Rank 0 holds an
exclusive lock (flock) on the marker for the job's life; the kernel drops it
when the process ends, however it ends, so a SIGKILL never leaves a stale
lock, and a second job on the same folder is refused before it writes anything.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path

from fedmpi import __version__
from fedmpi.errors import FedMPIError

MARKER = ".fedmpi-run"
NEW, RESUME, OVERWRITE = "new", "resume", "overwrite"


def hold_lock(path: Path, what: str) -> int | None:
    """An exclusive lock on `path` (created if missing), held until the process ends; its fd.

    A file system without locks (Lustre mounted without `flock`) gets a warning and None:
    the job runs, but a second job on the same folder would not be stopped.
    """
    try:  # never through a symbolic link: its target, anywhere, would get the lock record written over it
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise FedMPIError(f"{path}: is a symbolic link; fedmpi does not follow it (replace it by a plain "
                              "file, or choose another folder)") from None
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            holder = _read_holder(fd)
            os.close(fd)
            raise FedMPIError(f"{what} {path.parent} is in use by another job{holder}; wait for it to end, "
                              "or choose another folder") from None
        if e.errno in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            print(f"fedmpi: warning: {path.parent}: the file system does not support locks ({e.strerror}); "
                  "nothing stops a second job on this folder", flush=True)
            return fd
        os.close(fd)
        raise
    return fd


def announce(fd: int | None, path: Path) -> None:
    """Write who holds the lock into the locked file `path`, for the message a second job gets.

    A file system that cannot take these few bytes (full, out of quota) cannot take the run either:
    a FedMPIError naming the file and the reason.
    """
    if fd is not None:
        holder = {"fedmpi": __version__, "host": socket.gethostname(), "pid": os.getpid(),
                  "slurm_job": os.environ.get("SLURM_JOB_ID"), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        except OSError as e:
            raise FedMPIError(f"{path}: cannot write this job's lock record: {e.strerror}; free space on that "
                              "file system, or choose another --out") from None


def _read_holder(fd: int) -> str:
    """' (host h, pid p, since t)' from the lock file's last holder, or '' if it cannot be read."""
    try:
        h = json.loads(os.pread(fd, 4096, 0) or b"{}")
        job = f", SLURM job {h['slurm_job']}" if h.get("slurm_job") else ""
        return f" (host {h['host']}, pid {h['pid']}{job}, since {h['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


class RunFolder:
    """A run folder claimed by this job: marked as fedmpi's and locked until the process ends."""

    def __init__(self, path: Path, fd: int | None, created: list[Path]):
        self.path = path
        self.fd = fd
        self.created = created  # folders this claim made, outermost first (undone if setup fails)

    @classmethod
    def claim(cls, out: str, mode: str) -> RunFolder:
        """Check `out` for `mode` (new | resume | overwrite), then mark and lock it.

        Refused, with nothing written: a file; a folder that cannot be made or written; a
        folder with files in it but no marker; a marked folder with a run in it unless
        `mode` allows continuing or replacing it; a folder another job holds.
        """
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise FedMPIError(f"--out {path}: exists and is not a folder")
        existing = next(p for p in [path, *path.absolute().parents] if p.exists())
        if not existing.is_dir():
            raise FedMPIError(f"--out {path}: cannot be made, {existing} is a file")
        if not os.access(existing, os.W_OK | os.X_OK):
            why = "not writable" if existing == path else f"cannot be made, {existing} is not writable"
            raise FedMPIError(f"--out {path}: {why}")
        if path.is_dir():
            check_owned(path)
        created = []
        for folder in reversed([path, *path.absolute().parents]):
            if not folder.exists():
                try:
                    folder.mkdir()
                    created.append(folder)
                except FileExistsError:  # another job made it just now: the lock below decides
                    pass
        try:
            fd = hold_lock(path / MARKER, "run folder")
        except FedMPIError:  # in use: what this claim made (if anything) is the other job's now
            raise
        except BaseException:
            _remove_made(created)
            raise
        folder = cls(path, fd, created)
        if mode == NEW and folder.holds_run():
            folder.release_unused()
            raise FedMPIError(f"run folder {path} exists; pass --resume to continue it, --overwrite to "
                              "replace it, or choose another --out")
        if not folder.holds_run():  # new or empty: say now who holds it, so that a job refused during this
            try:                     # one's set-up names this job (an earlier run's folder is left as it is
                announce(fd, path / MARKER)  # until set-up has passed: job.train announces then)
            except FedMPIError:
                folder.release_unused()
                raise
        return folder

    def unlock(self) -> None:
        """The job is over: drop the lock (the process may start another job, fedmpi.run)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def holds_run(self) -> bool:
        return any(p.name != MARKER for p in self.path.iterdir())

    def reset(self) -> None:
        """Remove everything but the marker (--overwrite, or a --resume without checkpoint)."""
        for entry in self.path.iterdir():
            if entry.name == MARKER:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def release_unused(self) -> None:
        """Undo the claim of a job that does not start: the folders it made go, the lock is dropped."""
        if self.created:
            _remove_made(self.created)
        elif not self.holds_run():
            (self.path / MARKER).unlink(missing_ok=True)  # the folder was empty before this claim
        self.unlock()


def check_owned(path: Path) -> None:
    """Refuse a folder with files in it that fedmpi did not make."""
    if any(True for _ in path.iterdir()) and not (path / MARKER).is_file():
        raise FedMPIError(f"--out {path}: not a fedmpi run folder (it has files but no {MARKER} marker); fedmpi "
                          "never changes such a folder, whatever the flags: choose another --out. (A run folder made "
                          f"before fedmpi made markers (commit 6781fe5) has none: `touch {path / MARKER}` adopts it.)")


def _remove_made(created: list[Path]) -> None:
    if created:
        shutil.rmtree(created[0], ignore_errors=True)
