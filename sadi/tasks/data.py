"""Reading task data: the data directory, JSONL files, record validation, split checks.

Data files are read from a data directory (see ``default_data_dir``), never copied.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from sadi.tasks.base import DataFormatError, Record, SplitOverlapError

EXAMPLE_DATA = Path(__file__).resolve().parents[1] / "example_data"
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
    path = Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"
    return existing_dir(path, "SADI_DATA_DIR" if env else "the default beside the repo")


def existing_dir(path: Path, origin: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(
            f"data directory {path} (from {origin}) does not exist; "
            f"{HOW_TO_SET} to the folder that holds copa/, sst2/, ..."
        )
    return path


def read_jsonl(path: str | Path, *, validate: bool = False) -> list[Record]:
    """Read a JSONL file, one object per line; blank lines are skipped.

    Args:
        path: The file.
        validate: Check each record against the canonical multiple-choice format
            ``{"id", "question", "choices", "label"}`` and that ids are unique.

    Returns:
        The records in file order.

    Example:
        >>> read_jsonl(EXAMPLE_DATA / "tiny_mc.jsonl", validate=True)[0]["id"]
        'tiny-01'
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"data file {path} not found; if the data lives elsewhere, {HOW_TO_SET}"
        )
    records: list[Record] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as f:
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
                validate_record(record, f"{path}:{lineno}")
                if record["id"] in seen:
                    raise DataFormatError(
                        f"{path}:{lineno}: id {record['id']!r} already used "
                        f"on line {seen[record['id']]}; ids must be unique"
                    )
                seen[record["id"]] = lineno
            records.append(record)
    return records


def validate_record(record: Record, where: str) -> None:
    """Check one canonical multiple-choice record; ``where`` (``file:line``) prefixes errors."""
    missing = [k for k in ("id", "question", "choices", "label") if k not in record]
    if missing:
        raise DataFormatError(
            f"{where}: missing key(s) {missing}; a record needs "
            '{"id": str, "question": str, "choices": [str, ...], "label": int}'
        )
    choices, label = record["choices"], record["label"]
    if not isinstance(record["id"], str) or not record["id"]:
        raise DataFormatError(f"{where}: id must be a non-empty string, got {record['id']!r}")
    if not isinstance(record["question"], str):
        raise DataFormatError(f"{where}: question must be a string, got {record['question']!r}")
    if not (
        isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) for c in choices)
    ):
        raise DataFormatError(
            f"{where}: choices must be a list of at least 2 strings, got {choices!r}"
        )
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
        raise DataFormatError(
            f"{where}: label {label!r} is out of range for {len(choices)} "
            f"choices; it must be an int in 0..{len(choices) - 1}"
        )


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
