"""Atomic writes with the permissions the user's umask asks for, and file locks.

`tempfile` creates files 0600 and directories 0700 whatever the umask, and an atomic write
renames such a temporary into place: without the chmod here, results, samples and cache
entries would be unreadable to teammates sharing a cluster directory or a cache.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from sadi.infra.errors import writing


def current_umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(path: Path) -> Path:
    """chmod `path` (a file, or a directory tree) to 0666 / 0777 less the umask."""
    mask = current_umask()
    if path.is_dir():
        for root, _dirs, files in os.walk(path):
            os.chmod(root, 0o777 & ~mask)
            for name in files:
                os.chmod(os.path.join(root, name), 0o666 & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)
    return path


@contextmanager
def atomic_open(path: Path) -> Iterator[IO[str]]:
    """Write a text file atomically: a crash never leaves a half-written `path`; a full
    disk raises `DiskFullError` naming `path`."""
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                yield f
            honour_umask(Path(tmp))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def write_text_atomic(path: Path, text: str) -> Path:
    """Write `text` to `path` atomically (`atomic_open`)."""
    with atomic_open(path) as f:
        f.write(text)
    return path


def move_aside(path: Path) -> Path:
    """Rename a damaged file or folder to `damaged-<name>-<time>` beside it (kept, never
    deleted) and return the new path; the caller says so and computes it again."""
    aside = path.with_name(f"damaged-{path.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, aside)
    return aside


@contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive `flock` on `lock_path` (created if missing) while the block runs:
    the lock parallel jobs (and nodes sharing a file system with flock) take per key."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


__all__ = [
    "atomic_open",
    "current_umask",
    "honour_umask",
    "locked",
    "move_aside",
    "write_text_atomic",
]
