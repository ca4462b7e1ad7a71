"""Scoring a run's splits: steered through lm-eval (or the sweep engine's scores), unsteered
from a cache shared by every point, open-ended generations (the unsteered ones cached too),
and side-effect tasks scored with and without the run's steerer."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from sadi.core.architectures import weights_fingerprint
from sadi.data.prompts import Rendering
from sadi.data.tasks import SplitName, Task, load_task
from sadi.eval.harness import (
    evaluate_split,
    generate_split,
    open_ended_prompts,
    open_ended_split,
)
from sadi.eval.lm import SteeredLM
from sadi.infra.cache import cached
from sadi.infra.jsonio import read_json, read_jsonl, write_json, write_jsonl
from sadi.pipeline.backend import backend_of, cache_fields, vllm_lm
from sadi.pipeline.context import RunContext
from sadi.pipeline.results import generations_file, samples_file
from sadi.pipeline.validate import ConfigError
from sadi.steerers.base import Steerer
from sadi.sweep import SweepLM, SweepScores
from sadi.sweep.plan import condition_name

Metrics = dict[str, float]


def _lm_kwargs(cfg: DictConfig, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """The lm-eval model's settings from `model.*`, the same for scoring and generation."""
    kwargs: dict[str, Any] = {
        "tokenizer": tokenizer,
        "batch_size": cfg.model.batch_size,
        "batch_tokens": cfg.model.batch_tokens,
        "progress": cfg.progress,
    }
    if cfg.model.max_length:
        kwargs["max_length"] = cfg.model.max_length
    return kwargs


def evaluate(
    ctx: RunContext,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    split: SplitName,
    steerer: Steerer[Any] | None,
    engine: SweepScores | None = None,
) -> tuple[Metrics, list[dict[str, Any]]]:
    """Score one split; unsteered scores are cached (they are the same for every point).
    With `engine`, lm-eval's log-likelihoods come from its shared-prefix scores."""
    cfg = ctx.cfg
    lm_kwargs = _lm_kwargs(cfg, tokenizer)

    backend = backend_of(cfg)

    def score(out: Path | None = None) -> tuple[Metrics, list[dict[str, Any]]]:
        lm = (
            vllm_lm(cfg, model, tokenizer, steerer)
            if backend == "vllm"
            else SteeredLM(model, steerer=steerer, **lm_kwargs)
            if engine is None
            else SweepLM(
                model,
                scores=engine,
                condition=condition_name(steerer),
                steerer=steerer,
                **lm_kwargs,
            )
        )
        values, samples = evaluate_split(
            lm,
            task.splits[split],
            task_name=f"sadi_{task.name}_{split}",
            metric=task.metric,
            seed=cfg.seed,
        )
        if out is not None:
            write_json(out / "metrics.json", values)
            write_jsonl(out / "samples.jsonl", samples)
        return values, samples

    if steerer is not None:
        return score()
    key = {
        "model": cfg.model.source,
        "weights": weights_fingerprint(model),  # the weights, not only their path
        "scores": 3,  # what an entry holds; 2: samples carry p_label; 3: mc2 ones `correct`
        "dtype": cfg.model.dtype,
        "max_length": cfg.model.max_length,
        "task": task.name,
        "metric": task.metric,
        "items": [asdict(i) for i in task.splits[split]],  # every field, `correct` included
        **cache_fields(cfg),
    }
    stored, _ = cached(
        ctx.cache_root / "baselines",
        key,
        lambda tmp: score(tmp) and None,
        lambda entry: (read_json(entry / "metrics.json"), read_jsonl(entry / "samples.jsonl")),
    )
    return stored


def generate_open_ended(
    ctx: RunContext,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    conditions: dict[str, Steerer[Any] | None],
    rendering: Rendering,
) -> None:
    """Greedy generations on the task's open-ended prompts of the scored splits (a sweep on
    select generates no report prompt), rendered as the task's items are (chat template,
    the prompting arm's instruction or shots), per condition (the unsteered ones cached: the
    same for every point)."""
    cfg, run_dir, timings = ctx.cfg, ctx.run_dir, ctx.timings
    prompts = [
        (i, text)
        for i, text in open_ended_prompts(task.name, cfg.paths.data_dir)[: cfg.task.limit or None]
        if open_ended_split(i) in ctx.splits
    ]
    if rendering.chat or rendering.system or rendering.shots:
        prompts = [(i, rendering.render(text)) for i, text in prompts]
    for condition, st in conditions.items():
        t = time.perf_counter()

        def generate(st: Steerer[Any] | None = st) -> list[dict[str, Any]]:
            lm = (
                vllm_lm(cfg, model, tokenizer, st)
                if backend_of(cfg) == "vllm"
                else SteeredLM(model, steerer=st, **_lm_kwargs(cfg, tokenizer))
            )
            rows = generate_split(
                lm,
                prompts,
                task_name=f"sadi_{task.name}_open_ended",
                max_gen_toks=cfg.task.max_gen_toks,
                seed=cfg.seed,
            )
            return [{**r, "split": open_ended_split(str(r["id"]))} for r in rows]

        if st is None:  # the unsteered generations are the same for every point: cached
            key = {
                "model": cfg.model.source,
                "weights": weights_fingerprint(model),
                "dtype": cfg.model.dtype,
                "prompts": prompts,
                "max_length": cfg.model.max_length,  # the context a prompt is cut to
                "max_gen_toks": cfg.task.max_gen_toks,
                "seed": cfg.seed,
                **cache_fields(cfg),
            }

            def create(tmp: Path) -> None:
                write_jsonl(tmp / "generations.jsonl", generate())

            rows, _ = cached(
                ctx.cache_root / "generations",
                key,
                create,
                lambda entry: read_jsonl(entry / "generations.jsonl"),
            )
        else:
            rows = generate()
        # (entries cached before prompts had splits get theirs here)
        rows = [{**r, "split": open_ended_split(str(r["id"]))} for r in rows]
        timings[f"generate_open_ended_{condition}_s"] = time.perf_counter() - t
        unsteered = condition == "baseline" and len(conditions) > 1
        write_jsonl(run_dir / generations_file(task.name, unsteered), rows)


def load_side_tasks(cfg: DictConfig) -> list[Task]:
    """The tasks of `side_effects.tasks`, their `side_effects.split` cut to `limit` items."""
    split = cfg.side_effects.split
    if split not in ("select", "report"):
        raise ConfigError(
            f"side_effects.split={split!r}: choose report (the side-effect figure) or select"
        )
    return [
        load_task(
            name,
            data_dir=cfg.paths.data_dir,
            limit=cfg.side_effects.limit,
            seed=cfg.seed,
        )
        for name in cfg.side_effects.tasks
    ]


def score_side_effect(
    ctx: RunContext,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    side: Task,
    conditions: dict[str, Steerer[Any] | None],
    engine: SweepScores | None = None,
) -> dict[str, Any]:
    """Score a side task's split under every condition (the steerer fitted on the run's
    task); samples go to samples_side_<task>_<split>[_baseline].jsonl."""
    cfg, run_dir, timings = ctx.cfg, ctx.run_dir, ctx.timings
    split = cast(SplitName, cfg.side_effects.split)
    out: dict[str, Any] = {"split": split, "n_items": len(side.splits[split])}
    for condition, st in conditions.items():
        t = time.perf_counter()
        out[condition], rows = evaluate(ctx, model, tokenizer, side, split, st, engine)
        timings[f"side_{side.name}_{condition}_s"] = time.perf_counter() - t
        unsteered = condition == "baseline" and len(conditions) > 1
        write_jsonl(run_dir / samples_file(f"side_{side.name}", split, unsteered), rows)
    return out
