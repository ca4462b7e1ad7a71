"""Failed points of a sweep: each recorded in its run directory, all listed when it ends.

Hydra's launchers run every point of a sweep and then re-raise the first failure only. sadi's
entry point instead records a failed point as `failed.json` in its run directory (what
failed, why, and the traceback) and goes on; `FailedPoints`, a Hydra callback, prints the
list of every point that failed in this sweep, and why, when the sweep ends, and exits 1.
Rerunning the same command retries the failed points (finished points are skipped).
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from sadi.infra.errors import UserError
from sadi.infra.jsonio import read_json, write_json

FAILED = "failed.json"


def record_failure(run_dir: Path, overrides: list[str], err: BaseException) -> Path:
    """Write `failed.json` into the point's run directory and print one line."""
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "overrides": overrides,
        "error": type(err).__name__,
        "message": str(err),
        "user_error": isinstance(err, UserError),
        "traceback": "".join(traceback.format_exception(err)),
        "time": time.time(),
    }
    path = write_json(run_dir / FAILED, record)
    first = str(err).splitlines()[0] if str(err) else ""
    print(f"point {run_dir.name} failed: {type(err).__name__}: {first}", file=sys.stderr)
    return path


def clear_failure(run_dir: Path) -> None:
    """A point that now succeeds drops the failure an earlier attempt recorded."""
    (run_dir / FAILED).unlink(missing_ok=True)


def failures_since(sweep_dir: Path, since: float) -> list[dict[str, Any]]:
    """The failures recorded below `sweep_dir` at or after `since` (seconds since epoch)."""
    found = []
    for path in sorted(sweep_dir.rglob(FAILED)):
        try:
            record = read_json(path)
        except (OSError, ValueError):  # DamagedFileError is a ValueError
            continue
        if float(record.get("time", 0)) >= since:
            found.append({**record, "run_dir": str(path.parent)})
    return found


def summary(failures: list[dict[str, Any]]) -> str:
    lines = [f"{len(failures)} point(s) of this sweep failed:"]
    for f in failures:
        first = f["message"].splitlines()[0] if f["message"] else ""
        lines.append(f"  {Path(f['run_dir']).name}: {f['error']}: {first}")
    lines.append(
        f"Each point's {FAILED} holds the whole message and traceback; every other point's "
        "results are complete. Fix the cause and rerun the same command: finished points are "
        "skipped, the failed ones run again."
    )
    return "\n".join(lines)


class FailedPoints(Callback):
    """Hydra callback: at the end of a multirun, list every point that failed, then exit 1."""

    def __init__(self) -> None:
        self.start = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.start = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        failures = failures_since(Path(str(config.hydra.sweep.dir)), self.start)
        if failures:
            print(summary(failures), file=sys.stderr)
            raise SystemExit(1)


__all__ = ["FAILED", "FailedPoints", "clear_failure", "failures_since", "record_failure"]
