"""Arms ("Steering against prompting"): every arm of a task (unsteered, prompting, fine-tuning,
trained interventions, steering, prompting + steering) on the report split, each tested
paired against the unprompted unsteered model and against the best prompting arm (the one
chosen best on select), with the points each arm tried on select and its run time."""

from __future__ import annotations

import math
from collections.abc import Sequence

from sadi.report.blocks import Table, binary, fmt, paired_cell
from sadi.report.main_table import params_cell
from sadi.report.records import RunRecord, load_scores
from sadi.report.stats import bootstrap_ci

TITLE = "Steering against prompting"
NOTE = (
    "Every arm on the same report items: x100, 95% bootstrap CI; the deltas are paired on the "
    "report items (exact McNemar p for 0/1 scores, paired bootstrap otherwise) against the "
    "unprompted unsteered model and against the best prompting arm (prompt only, chosen best "
    "on select). `points on select`: the tuning budget each arm had (the points its sweep "
    "tried); `run time`: the seconds the sweep's points and the report run recorded in their "
    "results.json (a point rerun from the caches records its cached cost)."
)
COLUMNS = ["task", "model", "arm", "params", "metric", "report", "vs unsteered"]
COLUMNS += ["vs best prompt", "points on select", "run time (s)"]


def _select_value(rec: RunRecord) -> float:
    v = rec.metrics.get("select", {}).get(rec.metric)
    return -math.inf if v is None or math.isnan(v) else float(v)


def best_prompt(records: Sequence[RunRecord]) -> RunRecord | None:
    """The prompting-only arm (a prompt, no steerer) with the best select value, or None."""
    prompts = [r for r in records if r.prompt != "none" and not r.steered]
    return max(prompts, key=_select_value) if prompts else None


def _unsteered(records: Sequence[RunRecord]) -> dict[str, float] | None:
    """The unprompted unsteered model's report scores: the baseline samples of an unprompted
    record (every unprompted sweep scores it on the same items)."""
    for rec in records:
        if rec.prompt == "none":
            scores = load_scores(rec, "report", baseline=True)
            if scores:
                return scores
    return None


def _vs(mine: dict[str, float] | None, other: dict[str, float] | None, metric: str) -> str:
    if not mine or not other or not (mine.keys() & other.keys()):
        return "-"
    ids = sorted(mine.keys() & other.keys())
    a, b = [mine[i] for i in ids], [other[i] for i in ids]
    return paired_cell(a, b, scale=100, binary=binary(metric))


def arms_table(
    records: Sequence[RunRecord], n_resamples: int = 2000, seed: int = 0
) -> Table | None:
    """One row per arm of every task that has a prompting arm; None when none has."""
    tasks = sorted({(r.task_label, r.model) for r in records if r.prompt != "none"})
    if not tasks:
        return None
    out = Table(TITLE, list(COLUMNS), note=[NOTE])
    for task, model in tasks:
        group = [r for r in records if (r.task_label, r.model) == (task, model)]
        unsteered = _unsteered(group)
        best = best_prompt(group)
        best_scores = load_scores(best, "report") if best else None
        metric = group[0].metric
        if unsteered:
            e = bootstrap_ci(list(unsteered.values()), n_resamples, seed=seed)
            out.rows.append(
                [
                    task,
                    model,
                    "unsteered",
                    "-",
                    metric,
                    fmt(e),
                    "-",
                    _vs(unsteered, best_scores, metric),
                    "-",
                    "-",
                ]
            )
        for rec in sorted(group, key=lambda r: (r.prompt != "none", r.steered, r.method)):
            scores = load_scores(rec, "report")
            report = bootstrap_ci(list(scores.values()), n_resamples, seed=seed) if scores else None
            arm = rec.method + (" (best prompt)" if rec is best else "")
            out.rows.append(
                [
                    task,
                    model,
                    arm,
                    params_cell(rec) or "-",
                    rec.metric,
                    fmt(report),
                    _vs(scores, unsteered, rec.metric),
                    "-" if rec is best else _vs(scores, best_scores, rec.metric),
                    str(max(1, len(rec.points))),
                    f"{rec.seconds:.1f}" if rec.seconds else "-",
                ]
            )
    return out


__all__ = ["arms_table", "best_prompt"]
