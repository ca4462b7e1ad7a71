"""Whether a run is scored by the sweep engine (`sadi.sweep`), and with which of its sweep's
points: the grid points that differ from it only in its steerer's apply parameters share its
fit, so one engine pass scores them all (whichever point runs first)."""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from sadi.core.fingerprints import weights_fingerprint
from sadi.core.models import model_id
from sadi.infra.cache import digest
from sadi.pipeline.context import RunContext
from sadi.pipeline.hydra import parse_overrides
from sadi.steerers.base import Steerer
from sadi.sweep.plan import fit_conditions
from sadi.sweep.store import SweepScores

log = logging.getLogger(__name__)


def sibling_changes(
    grid: list[list[str]] | None, mine: list[str], apply_params: tuple[str, ...]
) -> list[dict[str, Any]]:
    """The apply-parameter values of the grid points that differ from `mine` only in
    `intervention.<p>` for p in `apply_params` (the point itself included); [] outside a
    grid sweep."""
    if not grid:
        return []
    own = parse_overrides(mine)
    out = []
    for job in grid:
        theirs = parse_overrides(job)
        diff = [
            k for k in {*own, *theirs} if (k in own) != (k in theirs) or own[k][0] != theirs[k][0]
        ]
        if all(
            k in theirs and k.startswith("intervention.") and k.split(".", 1)[1] in apply_params
            for k in diff
        ):
            out.append({k.split(".", 1)[1]: theirs[k][1] for k in diff})
    return out


def refit_note(steerer: Steerer[Any] | None, search_keys: list[str]) -> str | None:
    """What an Optuna search over parameters outside the steerer's apply parameters costs."""
    if steerer is None:
        return None
    apply = {f"intervention.{p}" for p in steerer.apply_params}
    refits = [k for k in search_keys if k not in apply]
    if not refits:
        return None
    return (
        f"note: this Optuna search varies {', '.join(refits)}, which changes the fit: each "
        f"new value costs a fit (cached: a repeated value does not); only "
        f"{', '.join(sorted(apply)) or 'no parameter'} vary without refitting"
    )


def build_engine(
    ctx: RunContext,
    model: nn.Module,
    steerer: Steerer[Any] | None,
    fit_key: dict[str, Any] | None,
) -> tuple[SweepScores | None, dict[str, Any]]:
    """The engine's scores this run is served from, or None (the per-point path), and a
    record of the choice for results.json."""
    note = refit_note(steerer, ctx.search_keys)
    if note:
        log.info(note)
    mode = ctx.cfg.sweep.engine
    if mode not in ("auto", True, False):
        raise ValueError(f"sweep.engine={mode!r}: choose auto (sweep points), true or false")
    if mode is False:
        return None, {"used": False, "reason": "sweep.engine=false"}
    if ctx.cfg.model.get("backend", "hf") != "hf":
        return None, {"used": False, "reason": f"model.backend={ctx.cfg.model.backend}"}
    if mode == "auto" and not ctx.multirun:
        return None, {"used": False, "reason": "a single run (sweep.engine=true to use it)"}
    why = None if steerer is None else steerer.prefix_unshared()
    if why is not None:
        log.info(
            "sweep engine: %s; each point runs its own steered prefix (shared by the choices "
            "of an item, not across points)",
            why,
        )
    changes = (
        [] if steerer is None else sibling_changes(ctx.grid, ctx.overrides, steerer.apply_params)
    )
    conditions = fit_conditions(steerer, changes)
    own = [n for n, st in conditions.items() if st is not None and st.prefix_unshared()]
    if own and why is None:
        log.info(
            "sweep engine: %d points of this fit edit before the last prompt token; each runs "
            "its own steered prefix",
            len(own),
        )
    group = fit_key or {
        "model": model_id(model),
        "dtype": str(next(model.parameters()).dtype),  # weights held exactly in two dtypes
        "weights": weights_fingerprint(model),  # share a fingerprint, not their scores
    }
    sweep = ctx.cfg.sweep
    scores = SweepScores(
        model,
        conditions,
        directory=ctx.cache_root / "sweeps" / digest(group),
        progress=ctx.cfg.progress,
        batch_size=sweep.batch_size,
        cache_mb=sweep.cache_mb,
        logits_mb=sweep.logits_mb,
        shared_min=sweep.shared_min,
    )
    n = len(conditions) - 1
    log.info(
        "sweep engine: %d point(s) of one fit and the baseline: %d scored together on shared "
        "unsteered prefixes, %d each on its own steered prefix",
        n,
        n - len(own),
        len(own),
    )
    info = {"used": True, "points": n, "own_prefix_points": len(own)}
    return scores, {**info, "directory": str(scores.directory)}


__all__ = ["build_engine", "refit_note", "sibling_changes"]
