"""JSON and JSONL files: written atomically with the umask's permissions, read back with an
error that names the file, the line and the fix when one is damaged (`DamagedFileError`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sadi.infra.errors import UserError
from sadi.infra.files import atomic_open


def write_json(path: Path, data: Any) -> Path:
    """Write JSON atomically (a crash never leaves a half-written file), umask honoured."""
    with atomic_open(path) as f:
        json.dump(data, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
    return path


DAMAGED_FIX = (
    "it was cut short (a crash or a full disk mid-write) or edited: move it aside and "
    "recompute what wrote it"
)


class DamagedFileError(UserError):
    """A JSON or JSONL file that does not parse: the message names the file, where it
    breaks, and the fix. A cache treats it as a miss; a results file is named to the user."""

    def __init__(self, path: Path, detail: str, fix: str = DAMAGED_FIX) -> None:
        super().__init__(f"{path}: {detail}; {fix}")
        self.path = path


def read_json(path: Path, fix: str = DAMAGED_FIX) -> Any:
    """A JSON file's value; `DamagedFileError` (naming the file and `fix`) if it does not
    parse."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DamagedFileError(path, f"not valid JSON ({err})", fix) from err


def read_jsonl(path: Path, fix: str = DAMAGED_FIX) -> list[dict[str, Any]]:
    """A JSONL file's rows (blank lines skipped); `DamagedFileError` naming the line that
    does not parse."""
    rows = []
    try:
        text = path.read_text()
    except UnicodeDecodeError as err:
        raise DamagedFileError(path, f"not UTF-8 text ({err})", fix) from err
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise DamagedFileError(path, f"line {number} is not valid JSON ({err})", fix) from err
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write one JSON object per line, atomically, umask honoured."""
    with atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


__all__ = [
    "DAMAGED_FIX",
    "DamagedFileError",
    "read_json",
    "read_jsonl",
    "write_json",
    "write_jsonl",
]
