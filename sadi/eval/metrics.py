"""Every metric in one table (torch-free): what each computes per item, which task scoring
reports it, how lm-eval is asked for it, and so which `optimized_metric` a task allows.

A task scores its items one way (`TaskSpec.metric`, a key of `SCORINGS`):

- "acc": one label per item. lm-eval's `acc` (argmax of the choices' log-likelihoods is the
  label) and `acc_norm` (the same, length-normalised), and sadi's `p_label` (the label's
  probability normalised over the item's choices: the CAA paper's behaviour-matching
  probability on the behaviour tasks).
- "mc2": several true answers (TruthfulQA MC2): `mc2`, the normalised probability mass on
  them.

A new metric is one `ItemMetric` entry (and, if a new way of scoring, one `Scoring` entry).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sadi.infra.errors import UserError


class NonFiniteScores(UserError):
    """A log-likelihood or logit came back NaN or infinite: the model's activations left its
    dtype's range (float16 ends at 65504, and steering that scales activations can pass it);
    an argmax over it would be a silent wrong score."""


def overflowed(dtype: object) -> str:
    """The cause and the fix of NaN or infinite scores, as every place that meets them says
    it (`dtype`: a torch dtype or its name)."""
    name = str(dtype).removeprefix("torch.")
    return (
        f"the model's activations overflowed {name} (float16 ends at 65504; steering that "
        "scales activations can pass it). Use model.dtype=bfloat16 or float32, or a smaller "
        "steering strength"
    )


@dataclass(frozen=True)
class ItemMetric:
    """One per-item score.

    Attributes:
        name: its key in samples files and results.json.
        binary: 0/1 per item (the report's paired test is an exact McNemar), else a
            probability (a paired bootstrap).
        lm_eval: lm-eval computes it (it is in the task's `metric_list`); else sadi does,
            from the per-choice log-likelihoods.
        description: what it measures, for tables and docs.
    """

    name: str
    binary: bool
    lm_eval: bool
    description: str


ProcessResults = Callable[[dict[str, Any], Sequence[tuple[float, bool]]], dict[str, float]]


@dataclass(frozen=True)
class Scoring:
    """How a task's items are scored, and the metrics that gives (the first is primary)."""

    name: str
    metrics: tuple[str, ...]
    # lm-eval's per-item hook; None: lm-eval's own multiple-choice metrics
    process_results: ProcessResults | None
    description: str
    # samples record every true answer (`correct`), for the report's answer-form references
    records_correct: bool = False


def process_mc2(doc: dict[str, Any], results: Sequence[tuple[float, bool]]) -> dict[str, float]:
    """TruthfulQA MC2: normalised probability mass on the correct choices (`doc["correct"]`)."""
    probs = [math.exp(ll) for ll, _ in results]
    true = sum(probs[i] for i in doc["correct"])
    return {"mc2": true / sum(probs)}


def label_probability(loglikelihoods: Sequence[float], label: int) -> float:
    """The labelled choice's probability normalised over the item's choices,
    exp(ll_label) / sum_i exp(ll_i), computed stably (max-shift)."""
    top = max(loglikelihoods)
    weights = [math.exp(ll - top) for ll in loglikelihoods]
    return weights[label] / sum(weights)


METRICS: dict[str, ItemMetric] = {
    m.name: m
    for m in (
        ItemMetric("acc", True, True, "the most likely choice is the label"),
        ItemMetric("acc_norm", True, True, "the same with length-normalised log-likelihoods"),
        ItemMetric(
            "p_label",
            False,
            False,
            "the label's probability normalised over the item's choices",
        ),
        ItemMetric("mc2", False, True, "normalised probability mass on the true answers"),
    )
}
SCORINGS: dict[str, Scoring] = {
    "acc": Scoring("acc", ("acc", "acc_norm", "p_label"), None, "one label per item"),
    "mc2": Scoring("mc2", ("mc2",), process_mc2, "several true answers per item", True),
}


def scoring_of(metric: str) -> Scoring:
    """The scoring that reports `metric` (a task's `primary_metric`), with the fix when none
    does."""
    for scoring in SCORINGS.values():
        if metric in scoring.metrics:
            return scoring
    known = sorted(METRICS)
    raise ValueError(f"unknown metric {metric!r}; the metrics are {known}")


def allowed(primary_metric: str) -> tuple[str, ...]:
    """The metrics a task whose primary metric is `primary_metric` reports: what its
    `optimized_metric` may read (the primary first)."""
    scoring = scoring_of(primary_metric)
    return (primary_metric, *(m for m in scoring.metrics if m != primary_metric))


def lm_eval_metric_list(scoring: str) -> list[dict[str, Any]]:
    """The `metric_list` of an lm-eval task config for `scoring`."""
    return [
        {"metric": name, "aggregation": "mean", "higher_is_better": True}
        for name in SCORINGS[scoring].metrics
        if METRICS[name].lm_eval
    ]


__all__ = [
    "METRICS",
    "SCORINGS",
    "ItemMetric",
    "NonFiniteScores",
    "Scoring",
    "allowed",
    "label_probability",
    "lm_eval_metric_list",
    "overflowed",
    "process_mc2",
    "scoring_of",
]
