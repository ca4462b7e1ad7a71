"""User mistakes versus bugs: what every command line prints for each.

A `UserError` (a bad config value, bad data, a missing or damaged file, a model that does
not match a steerer) is a mistake in what the user gave: its message names the bad value
and the fix, and the command prints that message alone and exits with status 2. Anything
else is a bug and keeps its traceback. `verbose=true` (or `HYDRA_FULL_ERROR=1`, or
`SADI_VERBOSE=1`) shows the traceback of a user error too. Ctrl-C prints one line saying
what is kept, and exits with status 130.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

USER_ERROR_STATUS = 2
INTERRUPTED_STATUS = 130


class UserError(ValueError):
    """A mistake in the user's config, data or files; the message says which and the fix."""


class DiskFullError(UserError, OSError):
    """A write failed for want of space (or quota); the message names the path."""


def verbose_requested(argv: list[str] | None = None) -> bool:
    """Whether the user asked for tracebacks: `verbose=true` on a Hydra command line,
    `--verbose`, `HYDRA_FULL_ERROR=1` or `SADI_VERBOSE=1`."""
    args = sys.argv[1:] if argv is None else argv
    env = any(os.environ.get(v, "") in ("1", "true") for v in ("HYDRA_FULL_ERROR", "SADI_VERBOSE"))
    return env or "verbose=true" in args or "--verbose" in args


def disk_full(path: Path | str, err: OSError) -> DiskFullError:
    """A `DiskFullError` naming `path` and the space left on its file system."""
    where = Path(path)
    probe = next((p for p in (where, *where.parents) if p.exists()), Path("/"))
    free = shutil.disk_usage(probe).free
    return DiskFullError(
        f"no space left writing {where} ({free / 2**20:.0f} MiB free on its file system): "
        "free some space, or point paths.cache_dir / hydra.run.dir / --out at another disk "
        f"({err.strerror or err})"
    )


def is_disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """Turn a full disk (or quota) met inside the block into a `DiskFullError` naming
    `path` (a failed write() names no file of its own)."""
    try:
        yield
    except OSError as err:
        if is_disk_full(err) and not isinstance(err, DiskFullError):
            raise disk_full(path, err) from err
        raise


@contextmanager
def reported(what: str = "sadi", verbose: bool | None = None) -> Iterator[None]:
    """Print a user error as one line and exit 2; a Ctrl-C as one line and exit 130.

    Args:
        what: the program, as the messages name it.
        verbose: show tracebacks of user errors too (default: `verbose_requested()`).
    """
    try:
        yield
    except KeyboardInterrupt:
        print(
            f"\n{what}: interrupted. Finished results, cache entries and saved sweep chunks "
            "are kept; rerun the same command to continue from them.",
            file=sys.stderr,
        )
        raise SystemExit(INTERRUPTED_STATUS) from None
    except UserError as err:
        if verbose if verbose is not None else verbose_requested():
            raise
        print(f"{what}: error: {err}", file=sys.stderr)
        raise SystemExit(USER_ERROR_STATUS) from None
    except OSError as err:
        if not is_disk_full(err) or (verbose if verbose is not None else verbose_requested()):
            raise
        print(f"{what}: error: {disk_full(err.filename or '.', err)}", file=sys.stderr)
        raise SystemExit(USER_ERROR_STATUS) from None


__all__ = [
    "DiskFullError",
    "INTERRUPTED_STATUS",
    "USER_ERROR_STATUS",
    "UserError",
    "disk_full",
    "is_disk_full",
    "reported",
    "verbose_requested",
    "writing",
]
