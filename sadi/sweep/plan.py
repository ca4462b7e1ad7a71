"""Which conditions one engine pass scores: the baseline, a run's steerer, and the points of
its sweep that differ from it only in apply parameters (`MethodSpec.apply_params`), which
share its fit. Which points those are is the pipeline's to say (`sadi.pipeline.engine`
reads the running Hydra grid); this module only names and builds the conditions."""

from __future__ import annotations

import json
import logging
from typing import Any

from sadi.infra.cache import digest
from sadi.steerers.base import Steerer

BASELINE = "baseline"
log = logging.getLogger(__name__)


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


def condition_name(steerer: Steerer[Any] | None) -> str:
    """A directory name that identifies a steerer's hyperparameters (its fit is the group's)."""
    if steerer is None:
        return BASELINE
    params = _canonical(json.loads(json.dumps(steerer.params(), default=str)))
    return f"{steerer.method}-{digest(params)[:16]}"


def fit_conditions(
    steerer: Steerer[Any] | None, changes: list[dict[str, Any]]
) -> dict[str, Steerer[Any] | None]:
    """The baseline, `steerer` and its variants `steerer.with_params(**c)` for each of
    `changes` (the sweep's other points of its fit), by condition name. A variant that
    cannot be built (e.g. a k too large for the model) is left to its own job, with a note."""
    conditions: dict[str, Steerer[Any] | None] = {BASELINE: None}
    if steerer is None:
        return conditions
    conditions[condition_name(steerer)] = steerer
    for change in changes:
        try:
            sibling = steerer.with_params(**change)
        except ValueError as err:  # that point fails on its own, with this message
            log.warning("sweep engine: the grid point %s is left to its own job: %s", change, err)
            continue
        conditions.setdefault(condition_name(sibling), sibling)
    return conditions


__all__ = ["BASELINE", "condition_name", "fit_conditions"]
