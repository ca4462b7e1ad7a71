"""Content fingerprints of what a run reads: its task data as loaded and its model's weights.

A completed point is recognised by these, not by paths: pointing `paths.data_dir` (or
`task.path`, or `model.source`) at other files, or changing the files behind the same paths,
changes the fingerprint, so the point is computed again. The data fingerprint hashes every
item of every split, as loaded. The weights fingerprint hashes every byte of every weight
file plus `config.json` (`sadi.core.fingerprints.directory_fingerprint`); each file's digest is
remembered by path, size and modification time under the cache root, so a checkpoint is read
in full once, and again only when a file of it changes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sadi.core.fingerprints import directory_fingerprint
from sadi.core.models import EMBEDDED_PREFIX, default_cache_dir, embedded_path
from sadi.data.tasks import Task


def _short(h: hashlib._Hash) -> str:
    return h.hexdigest()[:24]


def data_fingerprint(task: Task) -> str:
    """sha256 over every item of every split of `task`, as loaded (ids, text, choices, labels)."""
    h = hashlib.sha256()
    for split in sorted(task.splits):
        for item in task.splits[split]:  # type: ignore[literal-required]
            h.update(json.dumps([split, asdict(item)], sort_keys=True, default=str).encode())
            h.update(b"\n")
    return _short(h)


def model_fingerprint(source: str, cache_dir: str | Path | None = None) -> str:
    """The weights fingerprint of `model.source`, without loading the model.

    `embedded:<name>` reads its converted copy (converting it on first use), a local
    directory its files, and a hub id the snapshot in the local Hugging Face cache. A hub id
    not in that cache yet has no files to read: its fingerprint is `hub:<id>` (a new
    download under the same id is then not told apart; the run records which it was).
    File digests are remembered under `cache_dir` (default `default_cache_dir()`).
    """
    index = Path(cache_dir) if cache_dir else default_cache_dir()
    if source.startswith(EMBEDDED_PREFIX):
        return directory_fingerprint(embedded_path(source[len(EMBEDDED_PREFIX) :]), index)
    local = Path(source).expanduser()
    if local.exists():
        return directory_fingerprint(local if local.is_dir() else local.parent, index)
    try:
        from huggingface_hub import snapshot_download

        snapshot = snapshot_download(source, local_files_only=True)
    except Exception:  # not in the local cache (or not a hub id at all: loading will say)
        return f"hub:{source}"
    return directory_fingerprint(Path(snapshot), index)


def run_inputs(task: Task, source: str, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """What a completed point's results are keyed on besides its config."""
    return {"data": data_fingerprint(task), "model": model_fingerprint(source, cache_dir)}


__all__ = ["data_fingerprint", "model_fingerprint", "run_inputs"]
