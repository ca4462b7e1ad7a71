"""Content fingerprints of what a run reads: its task data as loaded and its model's weights.

A completed point is recognised by these, not by paths: pointing `paths.data_dir` (or
`task.path`, or `model.source`) at other files changes the fingerprint, so the point is
computed again. The data fingerprint hashes every item of every split, as loaded. The
weights fingerprint hashes each weight file's size and three 1 MiB samples (start, middle,
end) plus `config.json` whole: cheap on a 7B checkpoint (no full read) and different for a
fine-tuned variant of the same shape, whose weights differ everywhere.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sadi.models import EMBEDDED_PREFIX, embedded_path
from sadi.tasks import Task

SAMPLE = 1 << 20  # bytes per sample of a weight file
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")


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


def file_fingerprint(path: Path, sample: int = SAMPLE) -> str:
    """sha256 of a file's size and its first, middle and last `sample` bytes."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        for offset in sorted({0, max(0, size // 2 - sample // 2), max(0, size - sample)}):
            f.seek(offset)
            h.update(f.read(sample))
    return _short(h)


def directory_fingerprint(directory: Path) -> str:
    """Fingerprint of a model directory: its weight files (sampled) and config.json (whole)."""
    files = sorted(
        p for p in directory.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)
    )
    if not files:
        raise FileNotFoundError(
            f"no weight files ({', '.join(WEIGHT_SUFFIXES)}) under {directory}; "
            "model.source must be a model directory, an embedded:<name> or a hub id"
        )
    h = hashlib.sha256()
    config = directory / "config.json"
    if config.exists():
        h.update(config.read_bytes())
    for p in files:
        h.update(f"{p.relative_to(directory)}:{file_fingerprint(p)}\n".encode())
    return _short(h)


def model_fingerprint(source: str, cache_dir: str | Path | None = None) -> str:
    """The weights fingerprint of `model.source`, without loading the model.

    `embedded:<name>` reads its converted copy (converting it on first use), a local
    directory its files, and a hub id the snapshot in the local Hugging Face cache. A hub id
    not in that cache yet has no files to read: its fingerprint is `hub:<id>` (a new
    download under the same id is then not told apart; the run records which it was).
    """
    if source.startswith(EMBEDDED_PREFIX):
        return directory_fingerprint(embedded_path(source[len(EMBEDDED_PREFIX) :], cache_dir))
    local = Path(source).expanduser()
    if local.exists():
        return directory_fingerprint(local if local.is_dir() else local.parent)
    try:
        from huggingface_hub import snapshot_download

        snapshot = snapshot_download(source, local_files_only=True)
    except Exception:  # not in the local cache (or not a hub id at all: loading will say)
        return f"hub:{source}"
    return directory_fingerprint(Path(snapshot))


def run_inputs(task: Task, source: str, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """What a completed point's results are keyed on besides its config."""
    return {"data": data_fingerprint(task), "model": model_fingerprint(source, cache_dir)}


__all__ = [
    "data_fingerprint",
    "directory_fingerprint",
    "file_fingerprint",
    "model_fingerprint",
    "run_inputs",
]
