"""Answer form ("Answer form"): for multiple-choice items with answers of their own
(TruthfulQA), did steering change only the length or the flatness of the answer?"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sadi.eval.metrics import SCORINGS
from sadi.report.answers import answer_set
from sadi.report.blocks import Table, paired_cell
from sadi.report.records import RunRecord, load_samples

TITLE = "Answer form"
NOTE = (
    "Report split, tasks whose items offer different answers. 'chars' = mean length of "
    "the answer the model ranks first; 'flat' = the metric of a uniform distribution "
    "over each item's answers (mean share of true answers), and 'steered - flat' the "
    "steered model's per-item metric minus it, x100; 'longest' / 'shortest' = the "
    "share of items whose longest / shortest answer is true ('n/a': the samples do not "
    "say which answers are true); "
    "'entropy' = mean entropy of the softmax over each item's answer log-likelihoods "
    "divided by log(number of answers), 1 = uniform. Differences: steered - unsteered on "
    "the same items, paired bootstrap CI and p."
)
COLUMNS = ["task", "model", "method", "chars unsteered", "chars steered"]
COLUMNS += ["chars steered - unsteered", "flat", "steered - flat", "longest", "shortest"]
COLUMNS += ["entropy unsteered", "entropy steered", "entropy steered - unsteered"]
KEYS = ("continuations", "loglikelihoods", "prediction")


def _entropy(ll: Sequence[float]) -> float:
    """Entropy of the softmax over an item's answer log-likelihoods, over log(n): 1 = uniform."""
    x = np.asarray(ll, dtype=float)
    p = np.exp(x - x.max())
    p /= p.sum()
    return float(-(p * np.log(np.where(p > 0, p, 1.0))).sum() / np.log(len(x)))


def _records_correct(metric: str) -> bool:
    """Whether samples scored for `metric` record every true answer (`correct`): the
    scoring that reports it says so (`sadi.eval.metrics.SCORINGS`)."""
    return any(metric in s.metrics and s.records_correct for s in SCORINGS.values())


def _true_answers(r: dict[str, Any], metric: str) -> list[int]:
    """The indices of an item's true answers: `correct` where its scoring records every true
    answer (there a lone label is not all of them), else its label."""
    if r.get("correct"):
        return list(r["correct"])
    return [r["label"]] if "label" in r and not _records_correct(metric) else []


def _chars(r: dict[str, Any]) -> float:
    return float(len(r["continuations"][r["prediction"]].strip()))


def _row(rec: RunRecord, pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[str]:
    c_s, c_b = [_chars(s) for s, _ in pairs], [_chars(b) for _, b in pairs]
    h_s = [_entropy(s["loglikelihoods"]) for s, _ in pairs]
    h_b = [_entropy(b["loglikelihoods"]) for _, b in pairs]
    flat = longest = shortest = vs_flat = "n/a"
    truths = [_true_answers(s, rec.metric) or _true_answers(b, rec.metric) for s, b in pairs]
    if all(truths):
        sizes = [[len(c.strip()) for c in s["continuations"]] for s, _ in pairs]
        uniform = [len(t) / len(x) for t, x in zip(truths, sizes)]
        flat = f"{100 * np.mean(uniform):.1f}"
        if all(rec.metric in s for s, _ in pairs):
            score = [float(s[rec.metric]) for s, _ in pairs]
            vs_flat = paired_cell(score, uniform, scale=100, binary=False)
        longest, shortest = (
            f"{100 * np.mean([x.index(pick(x)) in t for x, t in zip(sizes, truths)]):.1f}"
            for pick in (max, min)
        )
    return [
        rec.task_label,
        rec.model,
        rec.method,
        f"{np.mean(c_b):.1f}",
        f"{np.mean(c_s):.1f}",
        paired_cell(c_s, c_b, 1, binary=False),
        flat,
        vs_flat,
        longest,
        shortest,
        f"{np.mean(h_b):.3f}",
        f"{np.mean(h_s):.3f}",
        paired_cell(h_s, h_b, 3, binary=False),
    ]


def answer_form_table(records: Sequence[RunRecord]) -> Table | None:
    """For multiple-choice tasks whose items offer different answers (TruthfulQA), where no
    answer-prior control applies: did steering only change the form of the answer? Length:
    the chosen answer's characters, steered vs unsteered, next to the metric of a flat
    distribution and of always taking the longest or the shortest answer. Flatness: the
    normalised entropy of the answer distribution (1 = uniform), which a metric summing
    probability mass over several true answers (mc2) rewards when it goes up. None when no
    record qualifies."""
    out = Table(TITLE, list(COLUMNS), note=[NOTE])
    for rec in sorted(records, key=lambda r: (r.task_label, r.model, r.method)):
        steered, base = load_samples(rec, "report"), load_samples(rec, "report", True)
        if not rec.steered or not steered or not base or answer_set(base):
            continue
        if not all(all(k in r for k in KEYS) for r in steered + base):
            continue
        by_id = {str(r["id"]): r for r in base}
        if any(str(r["id"]) not in by_id for r in steered):
            continue
        pairs = [(r, by_id[str(r["id"])]) for r in steered if len(r["continuations"]) > 1]
        if pairs:
            out.rows.append(_row(rec, pairs))
    return out if out.rows else None
