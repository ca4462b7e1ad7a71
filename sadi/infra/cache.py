"""On-disk caches shared by sweep points: fitted steerers and unsteered evaluations.

An entry is a directory named by the digest of everything that determines its content. A
per-key file lock makes parallel jobs (joblib, submitit, Slurm) that reach for the same key
compute it once: the first holds the lock and writes the entry atomically (temporary
directory, then rename); the others wait, then read it. Temporaries left by a job killed
mid-write (`<key>.<random>/`) are removed by the next job that takes the key's lock: while
it holds the lock nobody else can be writing them. An entry that cannot be read back is a
miss (`cached`): moved aside, said once, computed again. Entries get the permissions the
umask asks for (a shared cache stays readable to the team).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from safetensors import SafetensorError

from sadi.infra.errors import UserError, writing
from sadi.infra.files import honour_umask, locked, move_aside

log = logging.getLogger(__name__)


def digest(obj: Any) -> str:
    """A stable hex digest of a JSON-serialisable object (keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def get_or_create(
    root: Path, key: dict[str, Any], create: Callable[[Path], None]
) -> tuple[Path, bool]:
    """The entry directory for `key`, calling `create(tmp_dir)` to fill it on a miss
    (`cached`, reading nothing).

    Returns:
        (entry directory, hit): hit is False when this call created the entry.
    """
    return cached(root, key, create, lambda entry: entry)


T = TypeVar("T")
# what reading a damaged entry raises: cut-short JSON or safetensors, missing files, wrong
# contents (ArtifactError, SAEFormatError and DamagedFileError are UserErrors)
DAMAGE = (UserError, OSError, KeyError, ValueError, SafetensorError)


def cached(
    root: Path, key: dict[str, Any], create: Callable[[Path], None], read: Callable[[Path], T]
) -> tuple[T, bool]:
    """`read(entry)` of the entry for `key`, calling `create(tmp_dir)` to fill it on a miss
    (under the key's lock, renamed into place when complete).

    An entry that cannot be read (cut short by a crash or a full disk, or edited) is a miss:
    it is moved aside to `<root>/damaged-<name>-<time>/` (kept, never deleted), said once
    on stderr, and computed again. A fresh entry that still cannot be read raises.

    Returns:
        (what `read` returned, hit): hit is False when this call created the entry.
    """
    name = digest(key)
    entry = root / name
    with locked(root / f"{name}.lock"):
        remove_stale_temporaries(root, name)
        if (entry / "key.json").exists():
            try:
                return read(entry), True
            except DAMAGE as err:
                aside = move_aside(entry)
                first = str(err).splitlines()[0] if str(err) else ""
                log.warning(
                    "cache entry %s could not be read (%s: %s); moved aside to %s and computed "
                    "again",
                    entry,
                    type(err).__name__,
                    first,
                    aside.name,
                )
        _create(root, name, key, create)
        return read(entry), False


def _create(root: Path, name: str, key: dict[str, Any], create: Callable[[Path], None]) -> None:
    """Fill a temporary directory with `create`, then rename it to `root/name` (lock held)."""
    entry = root / name
    tmp = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=root))
    try:
        with writing(entry):
            create(tmp)
        (tmp / "key.json").write_text(json.dumps(key, indent=2, sort_keys=True, default=str))
        honour_umask(tmp)
        if entry.exists():  # a half-written entry from a crashed job: replace it
            shutil.rmtree(entry)
        os.replace(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temporaries(root: Path, name: str) -> list[Path]:
    """Delete the `<name>.*` directories under `root` (temporaries: a finished entry is
    `<name>/`, its lock the file `<name>.lock`); call with the key's lock held."""
    stale = [p for p in root.glob(f"{name}.*") if p.is_dir()]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale
