"""Weights & Biases logging (offline by default): the tracker a run logs its metrics,
samples and steerer to, or none."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig, OmegaConf

from sadi.infra.errors import UserError

_USER_WANDB_ENV = {k for k in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR") if k in os.environ}


class Tracker(Protocol):
    def log(self, metrics: dict[str, float]) -> None: ...
    def log_artifact(self, path: Path, name: str, kind: str) -> None: ...
    def log_table(self, key: str, rows: list[dict[str, Any]]) -> None: ...
    def finish(self) -> None: ...


class NoTracker:
    """logger=none: nothing leaves the run directory."""

    def log(self, metrics: dict[str, float]) -> None:
        pass

    def log_artifact(self, path: Path, name: str, kind: str) -> None:
        pass

    def log_table(self, key: str, rows: list[dict[str, Any]]) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbTracker:
    """One W&B run; files and artifact staging stay inside the run directory."""

    def __init__(
        self,
        run_dir: Path,
        config: dict[str, Any],
        *,
        project: str,
        mode: str,
        group: str | None,
        entity: str | None,
        name: str,
        job_type: str,
    ) -> None:
        # Stage artifacts inside this run's directory unless the user chose a place.
        for var, sub in (("WANDB_DATA_DIR", "wandb-staging"), ("WANDB_CACHE_DIR", "wandb-cache")):
            if var not in _USER_WANDB_ENV:
                os.environ[var] = str(run_dir / sub)
        import wandb

        self._wandb = wandb
        self.run = wandb.init(
            project=project,
            entity=entity,
            mode=os.environ.get("WANDB_MODE", mode),  # type: ignore[arg-type]
            dir=str(run_dir),
            config=config,
            group=group,
            name=name,
            job_type=job_type,
        )

    def log(self, metrics: dict[str, float]) -> None:
        self.run.log(metrics)
        for key, value in metrics.items():
            self.run.summary[key] = value

    def log_artifact(self, path: Path, name: str, kind: str) -> None:
        artifact = self._wandb.Artifact(name=name, type=kind)
        if path.is_dir():
            artifact.add_dir(str(path))
        else:
            artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def log_table(self, key: str, rows: list[dict[str, Any]]) -> None:
        """Per-sample rows as a W&B table (lists are stored as JSON text)."""
        if not rows:
            return
        columns: list[str | int] = list(rows[0])
        data = [
            [json.dumps(r[c]) if isinstance(r[c], list | dict) else r[c] for c in rows[0]]
            for r in rows
        ]
        self.run.log({key: self._wandb.Table(columns=columns, data=data)})

    def finish(self) -> None:
        self.run.finish()
        # finish() can return before the service has written the last records of an offline
        # run; tearing the service down waits for it, so the .wandb file is complete
        self._wandb.teardown()


log = logging.getLogger(__name__)


class TrackerError(UserError):
    """logger.strict=true and the tracker failed; results.json was written all the same."""


def make_tracker(cfg: DictConfig, run_dir: Path, name: str, job_type: str) -> Tracker:
    """The tracker `cfg.logger` names: W&B (offline by default) or none."""
    if cfg.logger.name == "none":
        return NoTracker()
    if cfg.logger.name != "wandb":
        raise ValueError(f"logger={cfg.logger.name!r} is not one of 'wandb', 'none'")
    return WandbTracker(
        run_dir,
        OmegaConf.to_container(cfg, resolve=True),  # type: ignore[arg-type]
        project=cfg.logger.project,
        mode=cfg.logger.mode,
        group=cfg.logger.group or cfg.sweep_name,
        entity=cfg.logger.entity,
        name=name,
        job_type=job_type,
    )


def tracked(logger: str, call: Callable[[], None], what: str) -> dict[str, Any]:
    """Run the tracker call `call()`; a failure is reported, never loses what was computed.

    Returns the tracking status recorded in results.json (the run fails afterwards, when
    `logger.strict=true`, once results.json is written).
    """
    try:
        call()
    except Exception as err:  # W&B login, network, disk: whatever it is, results are safe
        message = f"{type(err).__name__}: {err}"
        warning = (
            f"logging {what} to {logger} failed ({message}); the results on disk are "
            "complete. Set logger=none to skip tracking, or logger.strict=true to fail the "
            "run on a tracker error"
        )
        log.warning(warning)
        return {"logger": logger, "ok": False, "what": what, "error": message}
    return {"logger": logger, "ok": True, "what": what}


def log_run(
    cfg: DictConfig,
    run_dir: Path,
    metrics: dict[str, dict[str, dict[str, float]]],
    samples: dict[str, list[dict[str, Any]]],
    steerer_dir: Path | None,
    job_type: str,
) -> None:
    """One tracker run: the metrics (baseline ones under `baseline/`), the per-sample
    tables, the steerer as an artifact."""
    tracker = make_tracker(cfg, run_dir, name=run_dir.name, job_type=job_type)
    try:
        tracker.log(
            {
                f"{'baseline/' if c == 'baseline' else ''}{split}/{name}": value
                for c, per_split in metrics.items()
                for split, values in per_split.items()
                for name, value in values.items()
            }
        )
        for name, rows in samples.items():
            tracker.log_table(f"samples/{name}", rows)
        if steerer_dir is not None:
            tracker.log_artifact(steerer_dir, f"steerer-{cfg.task.name}", "steerer")
    finally:
        tracker.finish()


def log_fit(cfg: DictConfig, run_dir: Path, path: Path, name: str) -> None:
    """The fitted steerer as an artifact of a `fit` tracker run."""
    tracker = make_tracker(cfg, run_dir, name=f"fit-{run_dir.name}", job_type="fit")
    try:
        tracker.log_artifact(path, name, "steerer")
    finally:
        tracker.finish()
