"""One run, start to end: check, load the task, skip if complete, load the model, fit (or take
the fit from the cache), score every split with and without steering, write results.json,
then log to the tracker (a tracker failure never loses the results)."""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict
from typing import Any, cast

import numpy as np
import torch

from sadi.core.models import load_model_reused
from sadi.data.chat import apply_chat_template
from sadi.data.pairs import make_pairs, save_pairs
from sadi.data.prompts import Prompt, check_prompt, instruction_for, render_task
from sadi.data.tasks import SplitName, Task, load_task, split_ids
from sadi.eval.metrics import SCORINGS
from sadi.infra.cache import digest
from sadi.infra.jsonio import write_json, write_jsonl
from sadi.infra.verbosity import set_verbosity
from sadi.judge.rubrics import JUDGED_PREFIX
from sadi.pipeline.backend import check_backend
from sadi.pipeline.context import RunContext
from sadi.pipeline.engine import build_engine
from sadi.pipeline.fitting import build_steerer, fit_steerer
from sadi.pipeline.inputs import data_fingerprint, run_inputs
from sadi.pipeline.judging import build_judge, judge_open_ended
from sadi.pipeline.results import RESULTS_FILE, Metrics, Results, samples_file, write_results
from sadi.pipeline.resume import completed
from sadi.pipeline.scoring import (
    evaluate,
    generate_open_ended,
    load_side_tasks,
    score_side_effect,
)
from sadi.pipeline.tracking import TrackerError, log_run, tracked
from sadi.pipeline.validate import (
    ConfigError,
    check_optimized_metric,
    check_run_config,
    device_map_of,
    judge_metric_names,
)
from sadi.steerers.base import Steerer

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def optimized_value(ctx: RunContext, metrics: dict[str, Metrics]) -> float:
    """The value of `optimized_metric` (always a select-split metric) in `metrics`."""
    _, name = check_optimized_metric(
        ctx.cfg.optimized_metric, ctx.cfg.task.primary_metric, judge_metric_names(ctx.cfg)
    )
    if "select" not in metrics:
        return float("nan")
    if name not in metrics["select"]:  # a judged score no judge answer could be parsed for
        log.warning(
            "optimized_metric=%s: no value on this point (see judged in results.json)", name
        )
        return float("nan")
    return float(metrics["select"][name])


def load_run_task(ctx: RunContext) -> Task:
    """The run's task, its data checked, and `task.primary_metric` one its scoring reports."""
    cfg = ctx.cfg
    task = load_task(
        cfg.task.name,
        data_dir=cfg.paths.data_dir,
        format=cfg.task.format,
        limit=cfg.task.limit,
        seed=cfg.seed,
        path=cfg.task.path,
    )
    reported = SCORINGS[task.metric].metrics
    if cfg.task.primary_metric not in reported:
        raise ConfigError(
            f"task.primary_metric={cfg.task.primary_metric!r}: {task.name} is scored by "
            f"{task.metric!r}, which reports {list(reported)}; choose one of them"
        )
    return task


def run_prompt(ctx: RunContext) -> Prompt:
    """The run's prompting arm (`prompt=`), checked before the model loads."""
    p = ctx.cfg.get("prompt") or {}
    return Prompt(
        name=p.get("name", "none"),
        k=int(p.get("k", 0)),
        seed=int(p.get("seed", 0)),
        instruction_file=p.get("instruction_file"),
    )


def run(ctx: RunContext) -> float:
    """Fit on the fit split, score the configured splits with and without steering.

    Every value that can be checked without a model is checked first (`sadi.pipeline.
    validate`, the steerer's constructor, the task's data), then the model loads.

    Returns:
        The value of `optimized_metric` (a select-split metric of the steered model).
    """
    cfg, run_dir, timings = ctx.cfg, ctx.run_dir, ctx.timings
    set_verbosity(cfg.verbose)
    check_run_config(cfg)
    seed_everything(cfg.seed)
    steerer = build_steerer(ctx)  # unfitted: its constructor has checked its values
    check_backend(cfg, steerer)
    prompt = run_prompt(ctx)
    t0 = time.perf_counter()
    task = load_run_task(ctx)
    check_prompt(prompt, task)
    side_tasks = load_side_tasks(cfg)
    inputs = run_inputs(task, cfg.model.source, ctx.cache_root)
    if side_tasks:
        inputs["side_effects_data"] = {t.name: data_fingerprint(t) for t in side_tasks}
    if prompt.name == "instruction":  # its text, not only its file name, makes a point complete
        inputs["instruction"] = digest(instruction_for(task.name, prompt.instruction_file))
    done = run_dir / RESULTS_FILE
    previous = completed(done, ctx.config, inputs)
    if previous is not None:
        log.info("skipping completed point %s (its results.json holds this config)", run_dir)
        return optimized_value(ctx, previous.metrics)
    judge = build_judge(ctx)  # one health request before anything is generated
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(
        run_dir / "splits.json",
        {"task": task.name, "rules": task.spec.split_rule, "ids": split_ids(task)},
    )
    # embedded models convert once, into the default cache (not one copy per paths.cache_dir)
    model, tokenizer = load_model_reused(
        cfg.model.source,
        dtype=cfg.model.dtype,
        device=cfg.model.device,
        device_map=device_map_of(cfg.model),
        offload_folder=cfg.model.get("offload_folder"),
    )
    timings["load_model_s"] = time.perf_counter() - t0
    task, rendering = render_task(task, prompt, tokenizer, cfg.task.chat_template)
    if rendering.shots:
        write_json(run_dir / "shots.json", [asdict(s) for s in rendering.shots])

    pairs: list[Any] = []
    tracker_errors: list[dict[str, Any]] = []
    fit_key = None
    if steerer is not None:
        pairs = make_pairs(task.splits["fit"], n_pairs=cfg.task.n_pairs, seed=cfg.seed)
        save_pairs(pairs, run_dir / "pairs.jsonl")
        if len(pairs) < cfg.task.n_pairs:
            log.info("note: the fit split has %d pairs, fewer than task.n_pairs", len(pairs))
        steerer, fit_key = fit_steerer(ctx, steerer, model, tokenizer, pairs, tracker_errors)

    engine, engine_info = build_engine(ctx, model, steerer, fit_key)
    conditions: dict[str, Steerer[Any] | None] = {"baseline": None}
    if steerer is not None:
        conditions["steered"] = steerer
    metrics: dict[str, dict[str, Metrics]] = {c: {} for c in conditions}
    samples: dict[str, list[dict[str, Any]]] = {}
    for split in ctx.splits:
        for condition, st in conditions.items():
            t = time.perf_counter()
            metrics[condition][split], rows = evaluate(
                ctx, model, tokenizer, task, cast(SplitName, split), st, engine
            )
            timings[f"eval_{split}_{condition}_s"] = time.perf_counter() - t
            unsteered = condition == "baseline" and steerer is not None
            write_jsonl(run_dir / samples_file(task.name, split, unsteered), rows)
            samples[f"{split}_baseline" if unsteered else split] = rows
    judged: dict[str, Any] = {}
    if cfg.task.open_ended:
        generate_open_ended(ctx, model, tokenizer, task, conditions, rendering)
        if judge is not None:
            t = time.perf_counter()
            judged, judge_metrics, tables = judge_open_ended(
                ctx, judge, model, tokenizer, task.name, list(conditions)
            )
            samples.update(tables)  # the tracker logs them as tables (judged_<condition>)
            for condition, per_split in judge_metrics.items():
                for split, values in per_split.items():
                    metrics[condition].setdefault(split, {}).update(values)
            timings["judge_s"] = time.perf_counter() - t
    side_effects = {}
    for side in side_tasks:
        if cfg.task.chat_template:
            side = apply_chat_template(side, tokenizer)
        side_effects[side.name] = score_side_effect(ctx, model, tokenizer, side, conditions, engine)
    timings["total_s"] = time.perf_counter() - t0

    steered = metrics.get("steered", metrics["baseline"])
    results = Results(
        config=ctx.config,
        metrics=steered,
        baseline_metrics=metrics["baseline"],
        steered=steerer is not None,
        method=None if steerer is None else steerer.spec.as_dict(),
        scored_splits=list(ctx.splits),
        n_pairs=len(pairs),
        inputs=inputs,
        timings=timings,
        steerer=str(run_dir / "steerer") if steerer is not None else None,
        splits_file=str(run_dir / "splits.json"),
        split_sizes={s: len(items) for s, items in task.splits.items()},
        side_effects=side_effects,
        sweep_engine=engine_info,
        judged=judged,
    )
    write_results(done, results)  # first: nothing computed is lost to a tracker failure
    print_table(task.name, metrics, ctx.splits)
    steerer_dir = None if steerer is None else run_dir / "steerer"
    status = tracked(
        cfg.logger.name,
        lambda: log_run(cfg, run_dir, metrics, samples, steerer_dir, ctx.job_type),
        what="the run",
    )
    failures = [*tracker_errors, *([] if status["ok"] else [status])]
    results.tracking = {"logger": cfg.logger.name, "ok": not failures, "failures": failures}
    write_results(done, results)
    print(f"results: {done}\nrun directory: {run_dir}")
    if cfg.logger.strict and failures:
        first = failures[0]
        raise TrackerError(
            f"logger.strict=true and logging {first['what']} to {cfg.logger.name} failed "
            f"({first['error']}); the results are written: {done}"
        )
    return optimized_value(ctx, steered)


def print_table(task: str, metrics: dict[str, dict[str, Metrics]], splits: Any) -> None:
    """The run's metrics per split, unsteered beside steered, in percent (± stderr)."""
    rows = [f"{'task':<12} {'split':<7} {'metric':<9} {'baseline':>16} {'steered':>16}"]
    for split in splits:
        base = metrics["baseline"][split]
        steered = metrics.get("steered", {}).get(split, {})
        names = dict.fromkeys([*base, *steered])  # a judged score may exist on one side only
        for name in (k for k in names if not k.endswith("_stderr")):
            cells = []
            for c in ("baseline", "steered"):
                v = metrics.get(c, {}).get(split)
                if name.startswith(JUDGED_PREFIX):  # a judge's score on its own scale
                    cells.append(f"{v[name]:6.2f}" if v and name in v else "-")
                    continue
                cells.append(
                    f"{100 * v[name]:6.2f} ± {100 * v[name + '_stderr']:5.2f}"
                    if v and name + "_stderr" in v
                    else (f"{100 * v[name]:6.2f}" if v else "-")
                )
            rows.append(f"{task:<12} {split:<7} {name:<9} {cells[0]:>16} {cells[1]:>16}")
    print("\n".join(rows))


__all__ = [
    "load_run_task",
    "optimized_value",
    "print_table",
    "run",
    "run_prompt",
    "seed_everything",
]
