"""Everything sadi reads of the running Hydra job, in one place: whether it is a point of a
sweep, its overrides, every point of the running grid (the one use of Hydra's private
`hydra._internal`: its basic sweeper's grid expansion, pinned by constraints.txt and checked
by `tests/test_hydra.py` against Hydra's own sweep), and an Optuna search's keys."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf


def hydra_config() -> Any:
    """The running job's Hydra config, or None outside `@hydra.main` (the Python API)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get()
    except ValueError:
        return None


def in_multirun() -> bool:
    """Whether this job is a point of a sweep (`-m`)."""
    from hydra.types import RunMode

    hc = hydra_config()
    return hc is not None and hc.mode == RunMode.MULTIRUN


def task_overrides() -> list[str]:
    """The running job's own overrides (command line and sweep), [] outside Hydra."""
    hc = hydra_config()
    return [] if hc is None else [str(o) for o in hc.overrides.task]


def all_overrides() -> list[str]:
    """The job's task and hydra overrides, [] outside Hydra."""
    hc = hydra_config()
    return [] if hc is None else [*map(str, hc.overrides.task), *map(str, hc.overrides.hydra)]


def sweeper_target() -> str:
    """The running sweeper's `_target_` ("" outside a sweep)."""
    hc = hydra_config()
    return "" if hc is None else str(hc.sweeper.get("_target_", ""))


def expand_grid(params: dict[str, Any], overrides: list[str]) -> list[list[str]]:
    """Every job of a grid sweep of Hydra's basic sweeper: `params` (its
    `hydra.sweeper.params`) and the command line's `overrides`, expanded as the basic
    sweeper expands them (its own function, so the points are exactly Hydra's)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    parsed = parser.parse_overrides([*(f"{k}={v}" for k, v in params.items()), *overrides])
    return [list(job) for job in BasicSweeper.split_arguments(parsed, None)[0]]


def grid_jobs() -> list[list[str]] | None:
    """Every job's overrides of the running grid sweep, from its multirun.yaml; None when
    not in a sweep of Hydra's basic sweeper (e.g. Optuna, whose trials are not known
    before they run)."""
    hc = hydra_config()
    if hc is None or not in_multirun():
        return None
    path = Path(hc.sweep.dir) / "multirun.yaml"
    if not path.exists():
        return None
    saved = OmegaConf.load(path)
    sweeper = saved.hydra.sweeper
    if not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return None
    params = dict(sweeper.get("params") or {})
    return expand_grid(params, [str(o) for o in saved.hydra.overrides.task])


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`key -> (value as written, value)` of Hydra override strings."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return {o.get_key_element(): (o.get_value_element_as_str(), o.value()) for o in parsed}


def search_space_keys() -> list[str]:
    """The keys an Optuna sweep searches over (its `hydra.sweeper.params` and the sweep
    overrides of the command line); [] for other sweepers."""
    hc = hydra_config()
    if hc is None or not in_multirun() or "optuna" not in sweeper_target():
        return []
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = [str(k) for k in (hc.sweeper.get("params") or {})]
    try:  # the command line's sweep overrides (the job sees only its trial's values)
        parsed = OverridesParser.create().parse_overrides(
            [a for a in sys.argv[1:] if not a.startswith("-")]
        )
        keys += [o.get_key_element() for o in parsed if o.is_sweep_override()]
    except Exception:  # not a Hydra command line (a launcher's worker process)
        pass
    return sorted(set(keys))


__all__ = [
    "all_overrides",
    "expand_grid",
    "grid_jobs",
    "hydra_config",
    "in_multirun",
    "parse_overrides",
    "search_space_keys",
    "sweeper_target",
    "task_overrides",
]
