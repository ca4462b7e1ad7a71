"""Judging a run's open-ended generations (`judge=openai`): the judge is checked with one
health request before the model loads; after generation, each condition's generations of
the scored splits are judged (answers cached: a killed run resumes without asking again)
and scored judge-free (perplexity under the unsteered model, distinct-n, length, repeats);
the means land in the run's metrics as `judge_<score>` per split, so a sweep can select on
them (`optimized_metric=select/judge_behaviour`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from sadi.eval.harness import open_ended_prompts
from sadi.infra.jsonio import read_jsonl, write_jsonl
from sadi.judge.client import JudgeClient, JudgeSettings
from sadi.judge.judging import judge_rows
from sadi.judge.rubrics import JUDGED_PREFIX, RubricSet, concept_of, rubric_set
from sadi.judge.store import JudgementStore
from sadi.judge.textstats import perplexities, text_stats
from sadi.pipeline.context import RunContext
from sadi.pipeline.results import generations_file, judgements_file
from sadi.pipeline.validate import ConfigError, judge_metric_names

log = logging.getLogger(__name__)


@dataclass
class RunJudge:
    client: JudgeClient
    rubrics: RubricSet
    store: JudgementStore

    def identity(self) -> dict[str, Any]:
        s = self.client.settings
        return {
            "model": s.model,
            "base_url": s.base_url,
            "rubric": self.rubrics.name,
            "rubric_hash": self.rubrics.digest,
            "rubric_files": [r.file for r in self.rubrics.rubrics],
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
        }


def build_judge(ctx: RunContext) -> RunJudge | None:
    """The run's judge, its endpoint checked by one health request; None without one.
    Called before the model loads: a wrong URL, a stopped server or a missing key fails
    the run before anything is generated."""
    cfg = ctx.cfg
    judge: Any = cfg.get("judge") or {}
    name = judge.get("name", "none")
    if name == "none":
        return None
    if name != "openai":
        raise ConfigError(f"judge={name!r}: choose none or openai")
    if not cfg.task.open_ended:
        raise ConfigError(
            "a judge scores open-ended generations: set task.open_ended=true (a CAA behaviour "
            "task), or judge=none"
        )
    if not judge.get("base_url") or not judge.get("model"):
        raise ConfigError("judge=openai needs judge.base_url=... and judge.model=...")
    settings = JudgeSettings(
        base_url=str(judge.base_url),
        model=str(judge.model),
        api_key_env=judge.get("api_key_env"),
        max_concurrency=int(judge.max_concurrency),
        timeout_s=float(judge.timeout_s),
        retries=int(judge.retries),
        backoff_s=float(judge.backoff_s),
        max_tokens=int(judge.max_tokens),
    )
    rubrics = rubric_set(str(judge.rubric), str(cfg.task.name))
    client = JudgeClient(settings)
    client.health()
    return RunJudge(client, rubrics, JudgementStore(ctx.cache_root / "judgements"))


def judge_open_ended(
    ctx: RunContext,
    judge: RunJudge,
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    task_name: str,
    conditions: list[str],
) -> tuple[dict[str, Any], dict[str, dict[str, dict[str, float]]], dict[str, list[Any]]]:
    """Judge the run's generation files; returns (results.json's `judged`, per condition
    and split the `judge_*` metrics, per condition the judged rows as flat table rows for
    the tracker)."""
    cfg, run_dir = ctx.cfg, ctx.run_dir
    questions = dict(open_ended_prompts(task_name, cfg.paths.data_dir))
    concept = concept_of(task_name) if judge.rubrics.name == "axbench" else ""
    judged: dict[str, Any] = {"judge": judge.identity(), "conditions": {}}
    metrics: dict[str, dict[str, dict[str, float]]] = {}
    tables: dict[str, list[Any]] = {}
    for condition in conditions:
        unsteered = condition == "baseline" and len(conditions) > 1
        path = Path(run_dir) / generations_file(task_name, unsteered)
        rows = [
            {
                "id": r["id"],
                "split": r["split"],
                "question": questions[r["id"]],
                "prompt": r["prompt"],
                "generation": r["generation"],
            }
            for r in read_jsonl(path)
            if r.get("split") in ctx.splits
        ]
        result = judge_rows(judge.client, judge.store, judge.rubrics, rows, concept, cfg.progress)
        ppl = perplexities(
            model, tokenizer, [r["prompt"] for r in rows], [r["generation"] for r in rows]
        )
        for row, p in zip(result.rows, ppl):
            row["perplexity"] = p
        write_jsonl(Path(run_dir) / judgements_file(task_name, unsteered), result.rows)
        tables[f"judged_{condition}"] = [
            {
                "id": r["id"],
                "split": r["split"],
                "question": r["question"],
                "generation": r["generation"],
                **{f"score_{k}": v for k, v in r["scores"].items()},
                **{f"answer_{k}": v for k, v in r["answers"].items()},
                "perplexity": r["perplexity"],
            }
            for r in result.rows
        ]
        per_split: dict[str, Any] = {}
        metrics[condition] = {}
        for split in ctx.splits:
            mine = [r for r in result.rows if r["split"] == split]
            summary = result.summary(split)
            stats = text_stats(
                tokenizer, [r["generation"] for r in mine], [r["perplexity"] for r in mine]
            )
            per_split[split] = {"judged": summary, "text": stats}
            metrics[condition][split] = {
                JUDGED_PREFIX + k: float(v)
                for k, v in summary.items()
                if k != "n" and not k.endswith("_unparseable") and v is not None
            }
        judged["conditions"][condition] = {
            **per_split,
            "asked": result.asked,
            "cached": result.cached,
            "file": judgements_file(task_name, unsteered),
        }
        log.info(
            "judged %s: %d answers asked, %d from the cache", condition, result.asked, result.cached
        )
    return judged, metrics, tables


__all__ = ["RunJudge", "build_judge", "judge_metric_names", "judge_open_ended"]
