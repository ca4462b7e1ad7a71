"""A run's steerer: built from the config (its constructor checks every value before any
model loads), then fitted on the fit split's pairs or taken from the fit cache."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from sadi.data.pairs import Pair
from sadi.infra.cache import cached
from sadi.infra.errors import UserError
from sadi.pipeline.context import RunContext
from sadi.pipeline.tracking import log_fit, tracked
from sadi.pipeline.validate import ConfigError
from sadi.steerers.base import Steerer


def build_steerer(ctx: RunContext) -> Steerer[Any] | None:
    """The configured steerer, unfitted, or None for intervention=none. Runs before the model
    loads: bad values, and files the steerer reads (SAS's SAE), fail fast."""
    cfg = ctx.cfg
    if not cfg.intervention.get("_target_"):
        return None
    params = {k: v for k, v in cfg.intervention.items() if k != "name"}
    try:
        steerer: Steerer[Any] = instantiate(
            params, component=cfg.component.name, progress=cfg.progress
        )
    except Exception as err:  # hydra wraps the constructor's ValueError: show that message
        cause = err.__cause__ or err
        raise ConfigError(f"intervention={cfg.intervention.name}: {cause}") from cause
    with misfit(cfg):
        steerer.check_files()
    steerer.use_paths(ctx.cache_root, cfg.paths.data_dir)
    return steerer


@contextmanager
def misfit(cfg: DictConfig) -> Iterator[None]:
    """A ValueError of a fit (or of taking a cached fit, or of a file the steerer reads) is a
    value that does not fit, e.g. a k above the model's number of heads: a config error."""
    try:
        yield
    except ValueError as err:
        if isinstance(err, UserError):
            raise
        raise ConfigError(f"intervention={cfg.intervention.name}: {err}") from err


def fit_steerer(
    ctx: RunContext,
    steerer: Steerer[Any],
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: list[Pair],
    fit_errors: list[dict[str, Any]],
) -> tuple[Steerer[Any], dict[str, Any]]:
    """Fit the steerer, or take its state from the fit cache; returns it and its fit key
    (what the fit cache and the sweep engine key on). A tracker failure while logging the
    fit is appended to `fit_errors` (the fit itself is kept)."""
    cfg, timings = ctx.cfg, ctx.timings
    t = time.perf_counter()

    def create(tmp: Path) -> None:
        with misfit(cfg):
            steerer.fit(model, tokenizer, pairs)
        steerer.save(tmp)
        name = f"steerer-{steerer.method}-{cfg.task.name}"
        status = tracked(
            cfg.logger.name, lambda: log_fit(cfg, ctx.run_dir, tmp, name), what="the fit"
        )
        timings["fit_tracked"] = float(status["ok"])
        if not status["ok"]:
            fit_errors.append(status)

    key = steerer.fit_key(model, pairs)
    fitted, hit = cached(
        ctx.cache_root / "fits",
        key,
        create,
        lambda entry: Steerer.load(entry, model),
    )
    if hit:
        with misfit(cfg):
            steerer.adopt(fitted)
    timings["fit_s"] = time.perf_counter() - t
    timings["fit_cache_hit"] = float(hit)
    steerer.save(ctx.run_dir / "steerer")
    return steerer, key


__all__ = ["build_steerer", "fit_steerer", "misfit"]
