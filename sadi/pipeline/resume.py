"""Resuming: whether a run directory's results.json is complete for this config and these
inputs (then the point is skipped), and what happens to one that is not."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from sadi.infra.jsonio import DamagedFileError
from sadi.pipeline.results import Results, read_results

log = logging.getLogger(__name__)
# how a point is run, not what it computes: left out when recognising a completed point
RUNTIME_KEYS = ("paths", "progress", "verbose", "logger", "sweep")


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    """The config without where and how it ran, for recognising a completed identical point
    (`sweep`: how scores are computed, equal to 1e-4, not what)."""
    return {k: v for k, v in config.items() if k not in RUNTIME_KEYS}


def completed(done: Path, config: dict[str, Any], inputs: dict[str, Any]) -> Results | None:
    """The results in `done` (a results.json) when they hold this config run on these very
    inputs, else None.

    Results of another config or of other inputs (changed data or weights behind the same
    paths) are kept beside it as `results.superseded-<time>.json`, never overwritten; a
    results.json that cannot be read (cut short) is kept as `results.damaged-<time>.json`.
    """
    if not done.exists():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    try:
        previous = read_results(done)
    except DamagedFileError as err:
        kept = done.with_name(f"results.damaged-{stamp}.json")
        done.rename(kept)
        log.warning(
            "%s: could not be read (%s); kept as %s, recomputing the point", done, err, kept.name
        )
        return None
    if comparable(previous.config) == comparable(config):
        if previous.inputs == inputs:
            return previous
        why = "its data or model weights changed since"
    else:
        why = "it holds another config"
    kept = done.with_name(f"results.superseded-{stamp}.json")
    done.rename(kept)
    log.warning("%s: recomputing, %s (%s kept as %s)", done.parent, why, done.name, kept.name)
    return None


__all__ = ["RUNTIME_KEYS", "comparable", "completed"]
