"""Reading task data: the data directory, JSONL files, record validation, split checks.

Data files are read from a data directory (see ``default_data_dir``), never copied. They
are UTF-8 (a leading byte-order mark is allowed); any other encoding is rejected with the
line and byte offset of the first bad byte.

A canonical record is ``{"id": str, "question": str, "choices": [str, ...], "label": int}``:
a non-empty id, unique in its file; a question that is not blank; at least two choices,
none blank and no two equal once their leading whitespace is removed (each choice becomes
the continuation ``" " + choice.lstrip()``, see ``sadi.data.tasks``); and a label that is an
integer index into ``choices`` (not a string such as ``"0"``, nor a bool).
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import cast

from sadi.data.tasks.base import (
    SPLITS,
    DataFormatError,
    DataNotFoundError,
    Record,
    SplitName,
    SplitOverlapError,
    TaskError,
)

EXAMPLE_DATA = Path(__file__).resolve().parents[2] / "example_data"
HOW_TO_SET = "set the config `paths.data_dir=...` or the env var SADI_DATA_DIR"


def default_data_dir() -> Path:
    """The data directory: env ``SADI_DATA_DIR`` if set, else ``<repo>/../shared/data``.

    Returns:
        An existing directory.

    Example:
        >>> default_data_dir()  # doctest: +SKIP
        PosixPath('/work/shared/data')
    """
    env = os.environ.get("SADI_DATA_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[4] / "shared" / "data"
    return existing_dir(path, "SADI_DATA_DIR" if env else "the default beside the repo")


def existing_dir(path: Path, origin: str) -> Path:
    if not path.is_dir():
        raise DataNotFoundError(
            f"data directory {path} (from {origin}) does not exist; "
            f"{HOW_TO_SET} to the folder that holds copa/, sst2/, ..."
        )
    return path


def read_jsonl(
    path: str | Path, *, validate: bool = False, unique_choices: bool = True
) -> list[Record]:
    """Read a UTF-8 JSONL file, one object per line; blank lines are skipped.

    Args:
        path: The file.
        validate: Check each record against the canonical multiple-choice format
            ``{"id", "question", "choices", "label"}`` and that ids are unique.
        unique_choices: With ``validate``, also reject a record whose choices repeat
            (see ``validate_record``).

    Returns:
        The records in file order.

    Raises:
        DataFormatError: naming the file and line (and, for bytes that are not UTF-8, the
            byte offset) of the first bad record.

    Example:
        >>> read_jsonl(EXAMPLE_DATA / "tiny_mc.jsonl", validate=True)[0]["id"]
        'tiny-01'
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(
            f"data file {path} not found; if the data lives elsewhere, {HOW_TO_SET}"
        )
    records: list[Record] = []
    seen: dict[str, int] = {}
    try:
        with path.open(encoding="utf-8-sig") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataFormatError(
                        f"{path}:{lineno}: malformed JSON ({e.msg} at column "
                        f"{e.colno}); fix or remove that line"
                    ) from e
                if not isinstance(record, dict):
                    raise DataFormatError(
                        f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}"
                    )
                if validate:
                    validate_record(record, f"{path}:{lineno}", unique_choices=unique_choices)
                    if record["id"] in seen:
                        raise DataFormatError(
                            f"{path}:{lineno}: id {record['id']!r} already used "
                            f"on line {seen[record['id']]}; ids must be unique"
                        )
                    seen[record["id"]] = lineno
                records.append(record)
    except UnicodeDecodeError as e:
        raise _not_utf8(path) from e
    return records


def _not_utf8(path: Path) -> DataFormatError:
    # The text reader decodes in chunks, so its error's offsets are chunk-relative: decode
    # the whole file again to find the first bad byte's line and file offset.
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
        offset, reason = 0, "undecodable"
    except UnicodeDecodeError as e:
        offset, reason = e.start, e.reason
    line_start = raw.rfind(b"\n", 0, offset) + 1
    lineno = raw.count(b"\n", 0, offset) + 1
    utf16 = raw[:2] in (b"\xff\xfe", b"\xfe\xff")
    guess = "it starts with a UTF-16 byte-order mark; " if utf16 else ""
    source = "utf-16" if utf16 else "latin1"
    return DataFormatError(
        f"{path}:{lineno}: not UTF-8 ({reason}): byte 0x{raw[offset : offset + 1].hex()} at "
        f"byte offset {offset} of the file (byte {offset - line_start + 1} of line {lineno}); "
        f"{guess}data files must be UTF-8, so save the file as UTF-8 (e.g. "
        f"`iconv -f {source} -t utf-8 {path.name} > fixed.jsonl`, with the file's "
        "real encoding after -f)"
    )


def validate_record(record: Record, where: str, *, unique_choices: bool = True) -> None:
    """Check one canonical multiple-choice record; ``where`` (``file:line``) prefixes errors.

    Args:
        record: The parsed JSON object.
        where: Where it came from, for the message (``"data.jsonl:12"``).
        unique_choices: Reject two choices that are equal once their leading whitespace is
            removed (they would be the same continuation, so the item could not be scored).

    Raises:
        DataFormatError: naming ``where``, the item id, the bad value and the fix.
    """
    missing = [k for k in ("id", "question", "choices", "label") if k not in record]
    if missing:
        raise DataFormatError(
            f"{where}: missing key(s) {missing}; a record needs "
            '{"id": str, "question": str, "choices": [str, ...], "label": int}'
        )
    choices, label, question = record["choices"], record["label"], record["question"]
    if not isinstance(record["id"], str) or not record["id"]:
        raise DataFormatError(f"{where}: id must be a non-empty string, got {record['id']!r}")
    item = f"{where}: item {record['id']!r}"
    if not isinstance(question, str):
        raise DataFormatError(f"{item}: question must be a string, got {question!r}")
    if not question.strip():
        raise DataFormatError(
            f"{item}: question is empty ({question!r}); it is the context the choices "
            "continue, so write the question or remove the line"
        )
    if not (
        isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) for c in choices)
    ):
        raise DataFormatError(
            f"{item}: choices must be a list of at least 2 strings, got {choices!r}"
        )
    first: dict[str, int] = {}
    for i, choice in enumerate(choices):
        text = choice.lstrip()
        if not text:
            raise DataFormatError(
                f"{item}: choice {i} is empty ({choice!r}); write its text or remove it "
                "(and renumber the label)"
            )
        if unique_choices and text in first:
            raise DataFormatError(
                f"{item}: choices {first[text]} and {i} are the same, {text!r} (leading "
                "whitespace is ignored); identical choices cannot be told apart when "
                "scored, so make them differ or remove one (and renumber the label)"
            )
        first.setdefault(text, i)
    top = len(choices) - 1
    if isinstance(label, bool) or not isinstance(label, int):
        if isinstance(label, str) and label.strip().isdigit():
            fix = f"write {label.strip()} without quotes"
        elif isinstance(label, float) and label.is_integer():
            fix = f"write {int(label)} without the decimal point"
        else:
            fix = f"write the index of the correct choice as a number in 0..{top}"
        raise DataFormatError(
            f"{item}: label {label!r} is a {type(label).__name__}, but it must be an "
            f"integer index into choices (0..{top}); {fix}"
        )
    if not 0 <= label <= top:
        raise DataFormatError(
            f"{item}: label {label} is out of range for {len(choices)} "
            f"choices; it must be an int in 0..{top}"
        )


# Other datasets' split names, mapped to the sadi split that plays their part.
_SPLIT_ALIASES: dict[str, SplitName] = {
    "train": "fit",
    "training": "fit",
    "dev": "select",
    "val": "select",
    "valid": "select",
    "validation": "select",
    "test": "report",
    "eval": "report",
}


def check_split_names(names: Iterable[str]) -> list[SplitName]:
    """Check the names of the splits a run scores (config ``task.splits``).

    Args:
        names: Split names, e.g. ``["select", "report"]``; each one of ``SPLITS``
            (fit, select, report), none twice, at least one.

    Returns:
        The names, in the order given.

    Raises:
        ValueError: naming the bad name, the allowed ones and a fix such as
            ``task.splits=[select,report]``.

    Example:
        >>> check_split_names(["select", "report"])
        ['select', 'report']
    """
    fix = "e.g. task.splits=[select,report]"
    if isinstance(names, str):
        raise TaskError(
            f"task.splits={names!r} is a string; give a list of split names, "
            f"e.g. task.splits=[{names}]"
        )
    checked: list[SplitName] = []
    for name in names:
        if name not in SPLITS:
            alias = _SPLIT_ALIASES.get(str(name).lower())
            close = difflib.get_close_matches(str(name), SPLITS, n=1, cutoff=0.5)
            hint = (
                f" (sadi's {alias!r} split plays that part)"
                if alias
                else f" (did you mean {close[0]!r}?)"
                if close
                else ""
            )
            raise TaskError(
                f"task.splits: {name!r} is not a split{hint}; the splits are {list(SPLITS)} "
                "(fit: source of the contrastive pairs, select: hyperparameter choice, "
                f"report: the final number), so {fix}"
            )
        if name in checked:
            raise TaskError(f"task.splits lists {name!r} twice; list each split once, {fix}")
        checked.append(cast(SplitName, name))
    if not checked:
        raise TaskError(f"task.splits is empty, so nothing would be scored; {fix}")
    return checked


def check_disjoint(ids: Mapping[str, Sequence[str]], task: str = "") -> None:
    """Raise ``SplitOverlapError`` if any two splits share an item id."""
    names = list(ids)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared = sorted(set(ids[a]) & set(ids[b]))
            if shared:
                raise SplitOverlapError(
                    f"task {task!r}: splits {a!r} and {b!r} share {len(shared)} item id(s), "
                    f"e.g. {shared[:3]}; fit/select/report must be disjoint, so fix the split "
                    f"rule (TaskSpec.fit/select/report) or the data files"
                )
