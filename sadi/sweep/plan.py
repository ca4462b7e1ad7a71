"""Which scorer a run uses, and which points of the running Hydra sweep share its fit.

A point of a grid sweep (Hydra's basic sweeper, the `-m` command line or an experiment's
`hydra.sweeper.params`) reads the whole grid back from the sweep's `multirun.yaml`; the
points that differ from it only in apply parameters of its steerer (`Steerer.apply_params`)
share its fit and are scored together with it on shared prefixes. Whichever point runs
first computes them all; the others find their scores on disk (any launcher, any order).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from sadi.core.architectures import weights_fingerprint
from sadi.infra.cache import digest
from sadi.steerers.base import Steerer
from sadi.sweep.store import SweepScores

BASELINE = "baseline"


def _canonical(value: Any) -> Any:
    """Numbers as floats (a config's 5 and a sweep's 5.0 name the same point)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return str(value)


def condition_name(steerer: Steerer | None) -> str:
    """A directory name that identifies a steerer's hyperparameters (its fit is the group's)."""
    if steerer is None:
        return BASELINE
    params = _canonical(json.loads(json.dumps(steerer.params(), default=str)))
    return f"{steerer.method}-{digest(params)[:16]}"


def model_id(model: nn.Module) -> str:
    return str(getattr(model.config, "name_or_path", ""))


def _hydra() -> Any:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get()
    except ValueError:  # not under @hydra.main (the Python API)
        return None


def in_multirun() -> bool:
    from hydra.types import RunMode

    hc = _hydra()
    return hc is not None and hc.mode == RunMode.MULTIRUN


def sweep_jobs() -> list[list[str]] | None:
    """Every job's overrides of the running grid sweep, from its multirun.yaml; None when
    not in a sweep of Hydra's basic sweeper (e.g. Optuna, whose trials are not known
    before they run)."""
    hc = _hydra()
    if hc is None or not in_multirun():
        return None
    path = Path(hc.sweep.dir) / "multirun.yaml"
    if not path.exists():
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    saved = OmegaConf.load(path)
    sweeper = saved.hydra.sweeper
    if not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return None
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    parser = OverridesParser.create()
    overrides = parser.parse_overrides([*params, *saved.hydra.overrides.task])
    return [list(job) for job in BasicSweeper.split_arguments(overrides, None)[0]]


def sibling_changes(apply_params: tuple[str, ...]) -> list[dict[str, Any]]:
    """The apply-parameter values of the grid points that differ from the running job only
    in `intervention.<p>` for p in `apply_params` (the job itself included); [] outside a
    grid sweep."""
    jobs = sweep_jobs()
    hc = _hydra()
    if not jobs or hc is None:
        return []
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    mine = {o.get_key_element(): o for o in parser.parse_overrides(list(hc.overrides.task))}
    out = []
    for job in jobs:
        theirs = {o.get_key_element(): o for o in parser.parse_overrides(job)}
        diff = [
            k
            for k in {*mine, *theirs}
            if (k in mine) != (k in theirs)
            or mine[k].get_value_element_as_str() != theirs[k].get_value_element_as_str()
        ]
        if all(
            k in theirs and k.startswith("intervention.") and k.split(".", 1)[1] in apply_params
            for k in diff
        ):
            out.append({k.split(".", 1)[1]: theirs[k].value() for k in diff})
    return out


def search_space_keys() -> list[str]:
    """The keys an Optuna sweep searches over (its `hydra.sweeper.params` and the sweep
    overrides of the command line); [] for other sweepers."""
    hc = _hydra()
    if hc is None or not in_multirun() or "optuna" not in str(hc.sweeper.get("_target_", "")):
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


def refit_note(steerer: Steerer | None) -> str | None:
    """What an Optuna search over parameters outside the steerer's apply parameters costs."""
    if steerer is None:
        return None
    apply = {f"intervention.{p}" for p in steerer.apply_params}
    refits = [k for k in search_space_keys() if k not in apply]
    if not refits:
        return None
    return (
        f"note: this Optuna search varies {', '.join(refits)}, which changes the fit: each "
        f"new value costs a fit (cached: a repeated value does not); only "
        f"{', '.join(sorted(apply)) or 'no parameter'} vary without refitting"
    )


def build_engine(
    cfg: DictConfig,
    model: nn.Module,
    steerer: Steerer | None,
    fit_key: dict[str, Any] | None,
    cache_root: Path,
) -> tuple[SweepScores | None, dict[str, Any]]:
    """The engine's scores this run is served from, or None (the per-point path), and a
    record of the choice for results.json. Prints when a point runs its own steered prefix
    and when a grid point cannot be built (e.g. a k too large for the model)."""
    note = refit_note(steerer)
    if note:
        print(note)
    mode = cfg.sweep.engine
    if mode not in ("auto", True, False):
        raise ValueError(f"sweep.engine={mode!r}: choose auto (sweep points), true or false")
    if mode is False:
        return None, {"used": False, "reason": "sweep.engine=false"}
    if mode == "auto" and not in_multirun():
        return None, {"used": False, "reason": "a single run (sweep.engine=true to use it)"}
    why = None if steerer is None else steerer.prefix_unshared()
    if why is not None:
        print(
            f"sweep engine: {why}; each point runs its own steered prefix (shared by the "
            "choices of an item, not across points)"
        )
    conditions: dict[str, Steerer | None] = {BASELINE: None}
    if steerer is not None:
        conditions[condition_name(steerer)] = steerer
        for changes in sibling_changes(steerer.apply_params):
            try:
                sibling = steerer.with_params(**changes)
            except ValueError as err:  # that point fails on its own, with this message
                print(f"sweep engine: the grid point {changes} is left to its own job: {err}")
                continue
            conditions.setdefault(condition_name(sibling), sibling)
        own_names = [n for n, st in conditions.items() if st is not None and st.prefix_unshared()]
        if own_names and why is None:
            print(
                f"sweep engine: {len(own_names)} points of this fit edit before the last "
                "prompt token; each runs its own steered prefix"
            )
    group = fit_key or {"model": model_id(model), "weights": weights_fingerprint(model)}
    scores = SweepScores(
        model,
        conditions,
        directory=cache_root / "sweeps" / digest(group),
        progress=cfg.progress,
        batch_size=cfg.sweep.batch_size,
        cache_mb=cfg.sweep.cache_mb,
        logits_mb=cfg.sweep.logits_mb,
        shared_min=cfg.sweep.shared_min,
    )
    n = len(conditions) - 1
    n_own = sum(1 for st in conditions.values() if st is not None and st.prefix_unshared())
    print(
        f"sweep engine: {n} point(s) of one fit and the baseline: {n - n_own} scored together "
        f"on shared unsteered prefixes, {n_own} each on its own steered prefix"
    )
    info = {"used": True, "points": n, "own_prefix_points": n_own}
    return scores, {**info, "directory": str(scores.directory)}
