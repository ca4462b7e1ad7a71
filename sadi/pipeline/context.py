"""One run's context: built once from the composed config by the entry point, handed to the
pipeline's stages (which pass each lower layer only the values it needs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sadi.core.models import default_cache_dir
from sadi.pipeline import hydra
from sadi.pipeline.validate import ConfigError


@dataclass
class RunContext:
    """What a run needs besides the model and the task.

    Attributes:
        cfg: the composed config; seen by the pipeline only.
        config: the resolved config as plain data (recorded in results.json).
        run_dir: where the run writes.
        splits: the splits it scores (`scored_splits`).
        cache_root: fits, scores, sweeps and SAEs live below it.
        job_type: "eval" (a run or a sweep point) or "select" (a report run).
        multirun: whether it is a point of a sweep.
        grid: every point of the running grid sweep (their overrides), or None.
        overrides: this point's own overrides.
        search_keys: the keys an Optuna sweep searches over ([] otherwise).
        timings: seconds per stage, filled as the run goes.
    """

    cfg: DictConfig
    config: dict[str, Any]
    run_dir: Path
    splits: list[str]
    cache_root: Path
    job_type: str = "eval"
    multirun: bool = False
    grid: list[list[str]] | None = None
    overrides: list[str] = field(default_factory=list)
    search_keys: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def build(cls, cfg: DictConfig, job_type: str = "eval") -> RunContext:
        """The context of `cfg`, read from the running Hydra job where there is one."""
        config = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(config, dict)
        multirun = hydra.in_multirun()
        return cls(
            cfg=cfg,
            config={str(k): v for k, v in config.items()},
            run_dir=Path(cfg.paths.output_dir),
            splits=scored_splits(cfg, multirun),
            cache_root=Path(cfg.paths.cache_dir) if cfg.paths.cache_dir else default_cache_dir(),
            job_type=job_type,
            multirun=multirun,
            grid=hydra.grid_jobs() if multirun else None,
            overrides=hydra.task_overrides(),
            search_keys=hydra.search_space_keys(),
        )


def scored_splits(cfg: DictConfig, multirun: bool) -> list[str]:
    """The splits a run scores: `task.splits`, except that a sweep point scores the select
    split only unless `task.splits` was set on purpose; the report split is then scored
    once, for the chosen point, by `python -m sadi.select`."""
    splits = [str(s) for s in cfg.task.splits]
    if not multirun:
        return splits
    chosen = any(o.lstrip("+~").startswith("task.splits=") for o in hydra.all_overrides())
    chosen = chosen or cfg.task.splits != ["select", "report"]  # an experiment or the user
    if chosen and "report" in splits and "optuna" in hydra.sweeper_target():
        raise ConfigError(
            f"task.splits={splits} under the Optuna sweeper: its trials optimise the select "
            "split and never score the report split; drop report (task.splits=[select]) and "
            "report the chosen trial once with `python -m sadi.select <sweep dir>`"
        )
    return splits if chosen else ["select"]


__all__ = ["RunContext", "scored_splits"]
