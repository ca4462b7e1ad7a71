"""A run as a point of a sweep: which splits it scores, whether its results.json is
complete for this config and these inputs, and tracker calls that never lose results."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from sadi.infra.errors import UserError
from sadi.pipeline.tracking import DamagedFileError, read_json
from sadi.pipeline.validate import ConfigError

log = logging.getLogger(__name__)


def comparable(config: Any) -> Any:
    """The config without where it ran, for recognising a completed identical point."""
    config = dict(config)
    config.pop("paths", None)
    config.pop("progress", None)
    config.pop("verbose", None)
    config.pop("logger", None)
    config.pop("sweep", None)  # how scores are computed (equal to 1e-4), not what
    return config


def scored_splits(cfg: DictConfig) -> list[str]:
    """The splits this run scores: `task.splits`, except that a sweep point (multirun)
    scores the select split only unless `task.splits` was set on purpose; the report split
    is then scored once, for the chosen point, by `python -m sadi.select`."""
    splits = [str(s) for s in cfg.task.splits]
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
    except ValueError:  # not under @hydra.main (the Python API, sadi.select)
        return splits
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return splits
    overrides = [*hydra_cfg.overrides.task, *hydra_cfg.overrides.hydra]
    chosen = any(o.lstrip("+~").startswith("task.splits=") for o in overrides)
    chosen = chosen or cfg.task.splits != ["select", "report"]  # an experiment or the user
    if chosen and "report" in splits and "optuna" in str(hydra_cfg.sweeper.get("_target_", "")):
        raise ConfigError(
            f"task.splits={splits} under the Optuna sweeper: its trials optimise the select "
            "split and never score the report split; drop report (task.splits=[select]) and "
            "report the chosen trial once with `python -m sadi.select <sweep dir>`"
        )
    return splits if chosen else ["select"]


def completed(done: Path, config: Any, inputs: dict[str, Any]) -> bool:
    """Whether `done` (a results.json) holds this config run on these very inputs.

    Results of another config or of other inputs (changed data or weights behind the same
    paths) are kept beside it as `results.superseded-<time>.json`, never overwritten; a
    results.json that cannot be read (cut short) is kept as `results.damaged-<time>.json`.
    """
    if not done.exists():
        return False
    stamp = time.strftime("%Y%m%d-%H%M%S")
    try:
        previous = read_json(done)
        same = comparable(previous["config"]) == comparable(config)
    except (DamagedFileError, KeyError, TypeError) as err:
        kept = done.with_name(f"results.damaged-{stamp}.json")
        done.rename(kept)
        print(f"{done}: could not be read ({err}); kept as {kept.name}, recomputing the point")
        return False
    if same:
        if previous.get("inputs") == inputs:
            return True
        why = "its data or model weights changed since"
    else:
        why = "it holds another config"
    kept = done.with_name(f"results.superseded-{stamp}.json")
    done.rename(kept)
    print(f"{done.parent}: recomputing, {why} ({done.name} kept as {kept.name})")
    return False


def tracked(cfg: DictConfig, call: Callable[[], None], what: str) -> dict[str, Any]:
    """Run the tracker call `call()`; a failure is reported, never loses what was computed.

    Returns the tracking status recorded in results.json (`run` fails the run afterwards,
    when `logger.strict=true`, once results.json is written).
    """
    try:
        call()
    except Exception as err:  # W&B login, network, disk: whatever it is, results are safe
        message = f"{type(err).__name__}: {err}"
        warning = (
            f"logging {what} to {cfg.logger.name} failed ({message}); the results on disk "
            "are complete. Set logger=none to skip tracking, or logger.strict=true to fail "
            "the run on a tracker error"
        )
        log.warning(warning)
        print(f"warning: {warning}", file=sys.stderr)
        return {"logger": cfg.logger.name, "ok": False, "what": what, "error": message}
    return {"logger": cfg.logger.name, "ok": True, "what": what}


class TrackerError(UserError):
    """logger.strict=true and the tracker failed; results.json was written all the same."""


__all__ = ["TrackerError", "comparable", "completed", "scored_splits", "tracked"]
