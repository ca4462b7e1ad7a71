"""Hydra entry point: compose, fit (cached), evaluate with and without steering, write, log.

    python -m sadi.run                                  # SADI heads, COPA, SmolLM2
    python -m sadi.run task=sst2 component=neuron intervention.k=50 intervention.strength=10
    python -m sadi.run -m experiment=sadi_head task=copa,sst2      # a sweep (select split)

The run directory receives: `.hydra/` (the resolved config), `results.json`, `pairs.jsonl`,
`splits.json` (item ids and split rules), `steerer/` (the fitted artifact) and
`samples_<task>_<split>.jsonl` (steered; `_baseline` for the unsteered model). A point whose
`results.json` already holds the same config is skipped, so a crashed sweep resumes.
"""

from __future__ import annotations

import difflib
import logging
import math
import random
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from sadi.core.models import load_model_reused
from sadi.data.chat import apply_chat_template
from sadi.data.pairs import Pair, make_pairs, save_pairs
from sadi.data.tasks import SplitName, load_task, split_ids
from sadi.infra.cache import cached
from sadi.infra.errors import UserError, reported
from sadi.infra.verbosity import set_verbosity
from sadi.pipeline.config import register_configs
from sadi.pipeline.failures import clear_failure, record_failure
from sadi.pipeline.inputs import data_fingerprint, run_inputs
from sadi.pipeline.resume import TrackerError, completed, scored_splits, tracked
from sadi.pipeline.scoring import (
    Metrics,
    cache_root,
    evaluate,
    generate_open_ended,
    load_side_tasks,
    score_side_effect,
)
from sadi.pipeline.tracking import (
    NoTracker,
    Tracker,
    WandbTracker,
    read_json,
    write_json,
    write_jsonl,
)
from sadi.pipeline.validate import ConfigError, check_optimized_metric, check_run_config
from sadi.steerers.base import Steerer
from sadi.sweep.plan import build_engine, in_multirun

log = logging.getLogger(__name__)
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ("model", "task", "component", "intervention", "logger", "experiment")
# options whose Hydra plugin is an optional extra: (plugin module, how to install it)
OPTIONAL_PLUGINS = {
    "hydra/launcher=ray_local": ("hydra_plugins.hydra_ray_launcher", "pip install -e '.[ray]'"),
    "hydra/launcher=ray_cluster": ("hydra_plugins.hydra_ray_launcher", "pip install -e '.[ray]'"),
}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_tracker(cfg: DictConfig, run_dir: Path, name: str, job_type: str) -> Tracker:
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


def build_steerer(cfg: DictConfig) -> Steerer | None:
    """The configured steerer, unfitted (its constructor checks every hyperparameter), or
    None for intervention=none. Runs before the model loads, so bad values fail fast."""
    if not cfg.intervention.get("_target_"):
        return None
    params = {k: v for k, v in cfg.intervention.items() if k != "name"}
    try:
        steerer: Steerer = instantiate(params, component=cfg.component.name, progress=cfg.progress)
    except Exception as err:  # hydra wraps the constructor's ValueError: show that message
        cause = err.__cause__ or err
        raise ConfigError(f"intervention={cfg.intervention.name}: {cause}") from cause
    try:
        steerer.check_files()  # e.g. SAS's SAE directory: before the model's load, not after
    except ValueError as err:
        raise ConfigError(f"intervention={cfg.intervention.name}: {err}") from err
    steerer.use_paths(cache_root(cfg), cfg.paths.data_dir)
    return steerer


def fit_steerer(
    cfg: DictConfig,
    steerer: Steerer,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: list[Pair],
    run_dir: Path,
    timings: dict[str, float],
    fit_errors: list[dict[str, Any]],
) -> Steerer:
    """Fit the steerer, or take its state from the fit cache; a tracker failure while
    logging the fit is appended to `fit_errors` (the fit itself is kept)."""
    t = time.perf_counter()

    def create(tmp: Path) -> None:
        with _misfit(cfg):
            steerer.fit(model, tokenizer, pairs)
        steerer.save(tmp)
        name = f"steerer-{steerer.method}-{cfg.task.name}"
        status = tracked(cfg, lambda: _log_fit(cfg, run_dir, tmp, name), what="the fit")
        timings["fit_tracked"] = float(status["ok"])
        if not status["ok"]:
            fit_errors.append(status)

    fitted, hit = cached(
        cache_root(cfg) / "fits",
        steerer.fit_key(model, pairs),
        create,
        lambda entry: Steerer.load(entry, model),
    )
    if hit:
        with _misfit(cfg):
            steerer.adopt(fitted)
    timings["fit_s"] = time.perf_counter() - t
    timings["fit_cache_hit"] = float(hit)
    steerer.save(run_dir / "steerer")
    return steerer


@contextmanager
def _misfit(cfg: DictConfig) -> Iterator[None]:
    """A ValueError of a fit (or of taking a cached fit) is a value that does not fit this
    model, e.g. a k above its number of heads: a config error, named as one."""
    try:
        yield
    except ValueError as err:
        if isinstance(err, UserError):
            raise
        raise ConfigError(f"intervention={cfg.intervention.name}: {err}") from err


def _log_fit(cfg: DictConfig, run_dir: Path, path: Path, name: str) -> None:
    tracker = make_tracker(cfg, run_dir, name=f"fit-{run_dir.name}", job_type="fit")
    try:
        tracker.log_artifact(path, name, "steerer")
    finally:
        tracker.finish()


def optimized_value(cfg: DictConfig, metrics: dict[str, Metrics]) -> float:
    _, name = check_optimized_metric(cfg.optimized_metric, cfg.task.primary_metric)
    return float(metrics["select"][name]) if "select" in metrics else float("nan")


def run(cfg: DictConfig, job_type: str = "eval") -> float:
    """Fit on the fit split, score the configured splits with and without steering.

    Every value that can be checked without a model is checked first (`sadi.pipeline.validate`,
    the steerer's constructor, the task's data), then the model loads. results.json is
    written before anything is sent to the tracker, so a tracker failure loses nothing.

    Returns:
        The value of `optimized_metric` (a select-split metric of the steered model).
    """
    set_verbosity(cfg.verbose)
    check_run_config(cfg)
    splits = scored_splits(cfg)
    seed_everything(cfg.seed)
    run_dir = Path(cfg.paths.output_dir)
    config = OmegaConf.to_container(cfg, resolve=True)
    steerer = build_steerer(cfg)  # unfitted: its constructor has checked its values

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    task = load_task(
        cfg.task.name,
        data_dir=cfg.paths.data_dir,
        format=cfg.task.format,
        limit=cfg.task.limit,
        seed=cfg.seed,
        path=cfg.task.path,
    )
    side_tasks = load_side_tasks(cfg)
    inputs = run_inputs(task, cfg.model.source, cfg.paths.cache_dir)
    if side_tasks:
        inputs["side_effects_data"] = {t.name: data_fingerprint(t) for t in side_tasks}
    done = run_dir / "results.json"
    if completed(done, config, inputs):
        log.info("%s holds the results of this exact config and inputs: skipped", run_dir)
        print(f"skipping completed point {run_dir}")
        metrics_done: dict[str, Metrics] = read_json(done)["metrics"]
        return optimized_value(cfg, metrics_done)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(
        run_dir / "splits.json",
        {"task": task.name, "rules": task.spec.split_rule, "ids": split_ids(task)},
    )
    # embedded models convert once, into the default cache (not one copy per paths.cache_dir)
    model, tokenizer = load_model_reused(
        cfg.model.source, dtype=cfg.model.dtype, device=cfg.model.device
    )
    timings["load_model_s"] = time.perf_counter() - t0
    if cfg.task.chat_template:
        task = apply_chat_template(task, tokenizer)

    n_pairs = 0
    tracker_errors: list[dict[str, Any]] = []
    if steerer is not None:
        pairs = make_pairs(task.splits["fit"], n_pairs=cfg.task.n_pairs, seed=cfg.seed)
        save_pairs(pairs, run_dir / "pairs.jsonl")
        n_pairs = len(pairs)
        if n_pairs < cfg.task.n_pairs:
            print(f"note: the fit split has {n_pairs} pairs, fewer than task.n_pairs")
        steerer = fit_steerer(
            cfg, steerer, model, tokenizer, pairs, run_dir, timings, tracker_errors
        )

    fit_key = None if steerer is None else steerer.fit_key(model, pairs)
    engine, engine_info = build_engine(cfg, model, steerer, fit_key, cache_root(cfg))
    conditions: dict[str, Steerer | None] = {"baseline": None}
    if steerer is not None:
        conditions["steered"] = steerer
    metrics: dict[str, dict[str, Metrics]] = {c: {} for c in conditions}
    samples: dict[str, list[dict[str, Any]]] = {}
    for split in splits:
        for condition, st in conditions.items():
            t = time.perf_counter()
            metrics[condition][split], rows = evaluate(
                cfg, model, tokenizer, task, cast(SplitName, split), st, run_dir, engine
            )
            timings[f"eval_{split}_{condition}_s"] = time.perf_counter() - t
            suffix = "_baseline" if condition == "baseline" and steerer is not None else ""
            write_jsonl(run_dir / f"samples_{task.name}_{split}{suffix}.jsonl", rows)
            samples[f"{split}{suffix}"] = rows
    if cfg.task.open_ended:
        generate_open_ended(cfg, model, tokenizer, task, conditions, run_dir, timings)
    side_effects = {}
    for side in side_tasks:
        if cfg.task.chat_template:
            side = apply_chat_template(side, tokenizer)
        side_effects[side.name] = score_side_effect(
            cfg, model, tokenizer, side, conditions, run_dir, timings, engine
        )
    timings["total_s"] = time.perf_counter() - t0

    steered = metrics.get("steered", metrics["baseline"])
    results: dict[str, Any] = {
        "config": config,
        "metrics": steered,
        "baseline_metrics": metrics["baseline"],
        "steered": steerer is not None,
        "scored_splits": splits,
        "n_pairs": n_pairs,
        "inputs": inputs,
        "timings": timings,
        "steerer": str(run_dir / "steerer") if steerer is not None else None,
        "splits_file": str(run_dir / "splits.json"),
        "split_sizes": {s: len(items) for s, items in task.splits.items()},
        "side_effects": side_effects,
        "sweep_engine": engine_info,
        "tracking": None,
    }
    write_json(done, results)  # first: nothing computed is lost to a tracker failure
    print_table(task.name, metrics, splits)
    status = tracked(
        cfg, lambda: log_run(cfg, run_dir, metrics, samples, steerer, job_type), what="the run"
    )
    failures = [*tracker_errors, *([] if status["ok"] else [status])]
    results["tracking"] = {"logger": cfg.logger.name, "ok": not failures, "failures": failures}
    write_json(done, results)
    print(f"results: {done}\nrun directory: {run_dir}")
    if cfg.logger.strict and failures:
        first = failures[0]
        raise TrackerError(
            f"logger.strict=true and logging {first['what']} to {cfg.logger.name} failed "
            f"({first['error']}); the results are written: {done}"
        )
    return optimized_value(cfg, steered)


def log_run(
    cfg: DictConfig,
    run_dir: Path,
    metrics: dict[str, dict[str, Metrics]],
    samples: dict[str, list[dict[str, Any]]],
    steerer: Steerer | None,
    job_type: str,
) -> None:
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
        if steerer is not None:
            tracker.log_artifact(run_dir / "steerer", f"steerer-{cfg.task.name}", "steerer")
    finally:
        tracker.finish()


def print_table(task: str, metrics: dict[str, dict[str, Metrics]], splits: Any) -> None:
    rows = [f"{'task':<12} {'split':<7} {'metric':<9} {'baseline':>16} {'steered':>16}"]
    for split in splits:
        base = metrics["baseline"][split]
        for name in (k for k in base if not k.endswith("_stderr")):
            cells = []
            for c in ("baseline", "steered"):
                v = metrics.get(c, {}).get(split)
                cells.append(
                    f"{100 * v[name]:6.2f} ± {100 * v[name + '_stderr']:5.2f}"
                    if v and name + "_stderr" in v
                    else (f"{100 * v[name]:6.2f}" if v else "-")
                )
            rows.append(f"{task:<12} {split:<7} {name:<9} {cells[0]:>16} {cells[1]:>16}")
    print("\n".join(rows))


def check_overrides(argv: list[str]) -> None:
    """Fail early on a config-group option that does not exist, suggesting the nearest."""
    import importlib.util

    for arg in argv:
        if arg in OPTIONAL_PLUGINS and importlib.util.find_spec(OPTIONAL_PLUGINS[arg][0]) is None:
            raise ConfigError(
                f"{arg} needs the optional plugin {OPTIONAL_PLUGINS[arg][0]}, not "
                f"installed here: {OPTIONAL_PLUGINS[arg][1]}"
            )
        group, sep, value = arg.partition("=")
        group = group.lstrip("+~")
        if not sep or group not in GROUPS:
            continue
        known = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        for option in value.split(","):
            if option and option not in known:
                near = difflib.get_close_matches(option, known, n=3, cutoff=0.4)
                hint = f" Did you mean {near}?" if near else ""
                raise ConfigError(
                    f"unknown {group} {option!r}.{hint} Available: {known} "
                    f"(one YAML per option in {CONF_DIR / group})"
                )


register_configs()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    """One run, or one point of a sweep. A single run prints a user error as one line (exit
    2; `verbose=true` for the traceback). A sweep point that fails is recorded in its run
    directory and the sweep goes on; `sadi.pipeline.failures.FailedPoints` lists every failure at
    the end."""
    if not in_multirun():
        with reported("sadi.run", verbose=True if cfg.verbose else None):
            return run(cfg)
    run_dir = Path(cfg.paths.output_dir)
    try:
        value = run(cfg)
    except Exception as err:  # every point is tried; the sweep ends with the list
        from hydra.core.hydra_config import HydraConfig

        record_failure(run_dir, list(HydraConfig.get().overrides.task), err)
        return math.nan
    clear_failure(run_dir)
    return value


if __name__ == "__main__":
    with reported("sadi.run"):
        check_overrides(sys.argv[1:])
        main()
