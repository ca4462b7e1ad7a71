"""Judged generations ("Judged generations"): per record and judged score, the arm's and the
unsteered model's mean score on the open-ended prompts with bootstrap CIs, their paired
difference, the unparseable answers, the judge-free fluency figures, and who judged with
which rubric (the judge model and the rubric set's hash, from results.json `judged`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sadi.judge.judging import score_of
from sadi.judge.rubrics import score_names
from sadi.report.blocks import Table, paired_cell
from sadi.report.records import RunRecord, load_judged
from sadi.report.stats import bootstrap_ci

TITLE = "Judged generations"
NOTE = (
    "Greedy answers to the task's open-ended prompts, scored by the judge named in each row "
    "(rubric set and the hash of its templates: a changed rubric is another judgement). "
    "Mean score with its 95% bootstrap CI over the prompts whose answer had a score; delta: "
    "the arm minus the unsteered model on prompts scored in both, paired bootstrap. "
    "Perplexity under the unsteered model and the share of answers repeating one token are "
    "judge-free fluency checks (a collapsed model scores low fluency however it is judged)."
)
COLUMNS = ["task", "method", "split (n)", "judge", "rubric", "score", "arm", "unsteered"]
COLUMNS += ["delta", "unparseable (arm/unsteered)", "perplexity (arm/unsteered)"]
COLUMNS += ["repeats one token (arm/unsteered)"]


def judged_split(rec: RunRecord) -> str | None:
    """The split whose judgements the report shows: report where the run judged it, else
    select (a sweep point); None when the run judged nothing."""
    conditions = rec.judged.get("conditions") or {}
    held = {split for c in conditions.values() for split in c if split in ("select", "report")}
    return next((s for s in ("report", "select") if s in held), None)


def mean_cell(values: Sequence[float | None]) -> str:
    """'mean [lo, hi]' of the scored values (None: unparseable, left out), '-' for none."""
    parsed = [v for v in values if v is not None]
    if not parsed:
        return "-"
    e = bootstrap_ci(parsed)
    return f"{e.value:.2f} [{e.lo:.2f}, {e.hi:.2f}]"


def _text(rec: RunRecord, condition: str, split: str, key: str, digits: int) -> str:
    got = (rec.judged["conditions"].get(condition) or {}).get(split, {}).get("text", {})
    value = got.get(key)
    return "-" if value is None else f"{value:.{digits}f}"


def _rows(rec: RunRecord, split: str) -> list[list[str]]:
    judge: dict[str, Any] = rec.judged.get("judge", {})
    arm = load_judged(rec, split) or {}
    base = (load_judged(rec, split, baseline=True) or {}) if rec.steered else {}
    ids = sorted(arm)
    conditions = ("steered", "baseline") if rec.steered else ("baseline", None)
    rows = []
    for name in score_names(str(judge.get("rubric"))):
        a = [score_of(arm[i], name) for i in ids]
        b = [score_of(base[i], name) if i in base else None for i in ids]
        both = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
        delta = (
            paired_cell([x for x, _ in both], [y for _, y in both], digits=2)
            if rec.steered and both
            else "-"
        )
        pair = [
            "/".join("-" if c is None else _text(rec, c, split, key, digits) for c in conditions)
            for key, digits in (("perplexity", 1), ("repeat_share", 2))
        ]
        unparseable = f"{sum(x is None for x in a)}" + (
            f"/{sum(y is None for y in b)}" if rec.steered else ""
        )
        rows.append(
            [
                rec.task_label,
                rec.method,
                f"{split} ({len(ids)})",
                str(judge.get("model", "?")),
                f"{judge.get('rubric', '?')} #{judge.get('rubric_hash', '?')}",
                name,
                mean_cell(a),
                mean_cell(b) if rec.steered else "-",
                delta,
                unparseable,
                *pair,
            ]
        )
    return rows


def judged_table(records: Sequence[RunRecord]) -> Table | None:
    """One row per (record, judged score); None when no record was judged."""
    out = Table(TITLE, list(COLUMNS), note=[NOTE])
    for rec in records:
        split = judged_split(rec)
        if split is not None:
            out.rows.extend(_rows(rec, split))
    return out if out.rows else None


__all__ = ["TITLE", "judged_split", "judged_table", "mean_cell"]
