"""Answer priors ("Answers"): for multiple-choice items sharing one answer set (yes / no),
the constant answer, each model's most frequent answer, and the unsteered model with its
answer prior re-fitted on select (the calibrated control)."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from typing import Any

from sadi.report.blocks import Table, binary, paired_cell
from sadi.report.records import RunRecord, load_samples, samples_path
from sadi.report.stats import offset_correct, prior_offsets

TITLE = "Answers"
ONE_ANSWER = 0.9  # a model giving one answer to more than this share of items is flagged
ACC = "acc"  # the section's metric: whether the answer ranked first is the label
NOTE = (
    "Report split. 'constant' = the accuracy of always answering the most frequent label; "
    "'top answer' = the answer a model gives most often and its share of items; "
    f"'one answer' marks a steered model giving one answer to more than {ONE_ANSWER:.0%} of "
    "the items: its accuracy measures the label balance, not steering towards the task. "
    "'calibrated' = the unsteered model with one constant added to each answer's "
    "log-likelihood, fitted on the select split's unsteered scores (a shift of the answer "
    "prior, nothing else), scored on report; 'steered - calibrated' = the paired "
    "difference with its CI and exact McNemar p ('n/a': the items do not share one "
    "answer set, or no select scores)."
)
COLUMNS = ["task", "model", "method", "constant", "unsteered top answer", "steered top answer"]
COLUMNS += ["steered acc", "one answer", "calibrated", "steered - calibrated"]

Memo = dict[tuple[str, str, str], tuple[list[dict[str, Any]], Any]]


def answer_set(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The answers every item offers, when all offer the same ones (yes / no); else []."""
    conts: list[str] = (rows[0].get("continuations") or []) if rows else []
    return conts if all(r.get("continuations") == conts for r in rows) else []


def _top_answer(rows: Sequence[dict[str, Any]], key: str) -> tuple[str, float]:
    """The most frequent value of `key` over the items and its share: the answer's text when
    every item offers the same answers (yes / no), else its position ("choice 1")."""
    value, count = Counter(r[key] for r in rows).most_common(1)[0]
    conts = answer_set(rows)
    if conts and isinstance(value, int) and 0 <= value < len(conts):
        return conts[value].strip(), count / len(rows)
    return f"choice {value}", count / len(rows)


def _select_offsets(rec: RunRecord, memo: Memo) -> tuple[list[dict[str, Any]], Any]:
    """(unsteered select rows, their fitted answer offsets), fitted once per task, model and
    select scores: every method of one task and model shares the same unsteered scores."""
    f = samples_path(rec, "select", True)
    if not f.exists():
        return [], None
    key = (rec.task_label, rec.model, hashlib.sha256(f.read_bytes()).hexdigest())
    if key not in memo:
        sel = load_samples(rec, "select", True) or []
        conts = answer_set(sel)
        ok = conts and all(len(r.get("loglikelihoods") or []) == len(conts) for r in sel)
        off = (
            prior_offsets([r["loglikelihoods"] for r in sel], [r["label"] for r in sel])
            if ok
            else None
        )
        memo[key] = (sel, off)
    return memo[key]


def _calibrated(
    steered: Sequence[dict[str, Any]],
    base: Sequence[dict[str, Any]],
    sel: Sequence[dict[str, Any]],
    off: Any,
) -> list[str]:
    """[calibrated unsteered accuracy, steered - calibrated with CI and p] on report: the
    unsteered log-likelihoods plus one offset per answer (`off`, fitted on the select
    split's unsteered rows `sel`)."""
    conts = answer_set([*sel, *base])
    if (
        off is None
        or not conts
        or any(len(r.get("loglikelihoods") or []) != len(conts) for r in [*sel, *base])
    ):
        return ["n/a", "n/a"]
    by_id = {str(r["id"]): r for r in base}
    if any(str(r["id"]) not in by_id for r in steered):
        return ["n/a", "n/a"]
    pairs = [by_id[str(r["id"])] for r in steered]
    cal = offset_correct([r["loglikelihoods"] for r in pairs], [r["label"] for r in pairs], off)
    acc = [float(r[ACC]) for r in steered]
    return [f"{100 * cal.mean():.1f}", paired_cell(acc, cal, scale=100, binary=binary(ACC))]


def answer_table(records: Sequence[RunRecord]) -> Table | None:
    """For multiple-choice reports: the accuracy of always giving the most frequent label,
    and how often the unsteered and the steered model give their own most frequent answer.
    A steered gain that only moves the answer prior (every item answered alike) is no better
    than that constant answer, whatever its paired test says; nor is one that does no better
    than the unsteered model with its answer prior re-fitted on select (`_calibrated`).
    None when no record has single-answer predictions."""
    out = Table(TITLE, list(COLUMNS), note=[NOTE])
    memo: Memo = {}
    for rec in sorted(records, key=lambda r: (r.task_label, r.model, r.method)):
        steered, base = load_samples(rec, "report"), load_samples(rec, "report", True)
        if not rec.steered or not steered or not base:
            continue
        if not all("prediction" in r and "label" in r and ACC in r for r in steered + base):
            continue  # not a single-answer multiple-choice task (e.g. TruthfulQA MC2)
        label, label_share = _top_answer(steered, "label")
        b_ans, b_share = _top_answer(base, "prediction")
        s_ans, s_share = _top_answer(steered, "prediction")
        acc = sum(float(r[ACC]) for r in steered) / len(steered)
        out.rows.append(
            [
                rec.task_label,
                rec.model,
                rec.method,
                f"{100 * label_share:.1f} ('{label}')",
                f"'{b_ans}' {100 * b_share:.0f}%",
                f"'{s_ans}' {100 * s_share:.0f}%",
                f"{100 * acc:.1f}",
                "yes" if s_share > ONE_ANSWER else "",
                *_calibrated(steered, base, *_select_offsets(rec, memo)),
            ]
        )
    return out if out.rows else None
