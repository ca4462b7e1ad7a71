"""Read an offline W&B run back from its `run-<id>.wandb` file (no service, no network).

Offline mode writes no summary json or config.yaml: everything is in the `.wandb` file, a
LevelDB-style log (a 7-byte file header, 32 KiB blocks, records framed by a 7-byte header:
crc32, length, type FULL/FIRST/MIDDLE/LAST) of protobuf `Record`s.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

_FILE_HEADER = 7
_BLOCK = 32768
_RECORD_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _payloads(data: bytes) -> Iterator[bytes]:
    if data[:4] != b":W&B":
        raise ValueError("not a W&B run file (missing ':W&B' header)")
    pos, parts = _FILE_HEADER, b""
    while pos + _RECORD_HEADER <= len(data):
        room = _BLOCK - pos % _BLOCK
        if room < _RECORD_HEADER:  # block trailer padding
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + _RECORD_HEADER])
        pos += _RECORD_HEADER
        chunk, pos = data[pos : pos + length], pos + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            parts = chunk
        elif kind == _MIDDLE:
            parts += chunk
        elif kind == _LAST:
            yield parts + chunk
            parts = b""
        elif kind == 0 and length == 0:  # zero padding at the end of a block
            pos += _BLOCK - pos % _BLOCK if pos % _BLOCK else 0
        else:
            raise ValueError(f"corrupt record type {kind} at byte {pos}")


def _key(item: Any) -> str:
    """Items carry either `key` or, for keys with "/" or ".", a `nested_key` list."""
    return str(item.key) if item.key else "/".join(item.nested_key)


@dataclass
class OfflineRun:
    """What an offline run logged: config, history rows, summary, artifact names."""

    run_id: str = ""
    group: str = ""
    job_type: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)


def read_offline_run(path: str | Path) -> OfflineRun:
    """Parse `wandb/offline-run-*/run-<id>.wandb` (or the offline-run directory)."""
    path = Path(path)
    if path.is_dir():
        (path,) = path.glob("run-*.wandb")
    out = OfflineRun()
    for payload in _payloads(path.read_bytes()):
        record = pb.Record()  # type: ignore[attr-defined]
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            # a run may be recorded more than once (updates); later records can leave
            # fields empty, so an empty value never overwrites a known one
            out.run_id = record.run.run_id or out.run_id
            out.group = record.run.run_group or out.group
            out.job_type = record.run.job_type or out.job_type
            for item in record.run.config.update:
                out.config[item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                out.config[item.key] = json.loads(item.value_json)
        elif kind == "history":
            out.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                out.summary[_key(item)] = json.loads(item.value_json)
        elif kind == "artifact":
            out.artifacts.append(record.artifact.name)
    return out
