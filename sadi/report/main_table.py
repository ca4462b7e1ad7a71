"""The main table: per record, its metric on select and report (steered and unsteered) with
bootstrap CIs, and the paired report delta with its test."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sadi.report.blocks import Table, binary, fmt
from sadi.report.records import Row, RunRecord, load_scores
from sadi.report.stats import Estimate, bootstrap_ci, paired_test

TITLE = "Steering report"
HEADER = (
    "Hyperparameters were chosen on the **select** split; the **report** split is shown once, "
    "for the chosen point only. Values are the metric x100 with a 95% bootstrap CI over items "
    "({n} resamples, seed {seed}); delta = steered - baseline on the same report items, with a "
    "paired test (exact McNemar for 0/1 scores, paired bootstrap otherwise). 'CI n/a': no "
    "per-item samples, the value +- stderr from results.json."
)
COLUMNS = ["task", "model", "method", "params", "metric", "select (steered)", "select (baseline)"]
COLUMNS += [
    "report (steered)",
    "report (baseline)",
    "delta report",
    "p (test)",
    "n report",
    "chosen by",
]


def _estimate(rec: RunRecord, split: str, baseline: bool, n: int, seed: int) -> Estimate | None:
    """From the samples when present, else the value and stderr in results.json."""
    if scores := load_scores(rec, split, baseline):
        return bootstrap_ci(list(scores.values()), n, seed=seed)
    v = (rec.baseline_metrics if baseline else rec.metrics).get(split, {})
    return (
        Estimate(float(v[rec.metric]), stderr=v.get(f"{rec.metric}_stderr"))
        if rec.metric in v
        else None
    )


def params_cell(rec: RunRecord) -> str:
    axes = rec.spec.axes if rec.spec else [k for k in rec.params if k != "shots"]
    keys = [*axes, "shots"]  # e.g. "k=4, strength=5.0", "shots=3" (few_shot)
    return ", ".join(f"{k}={rec.params[k]}" for k in keys if k in rec.params)


def table(records: Sequence[RunRecord], n_resamples: int = 2000, seed: int = 0) -> list[Row]:
    """One row per record: select and report (steered), baseline report, paired delta."""
    rows = []
    for rec in sorted(records, key=lambda r: (r.task_label, r.model, r.method != "none", r.method)):
        row: dict[str, Any] = {"task": rec.task_label, "method": rec.method}
        row["params"] = params_cell(rec)
        row |= {"model": rec.model, "metric": rec.metric, "chosen_by": rec.chosen_by}
        row |= {"run_dir": str(rec.run_dir), "diff": None, "p_value": None, "test": None}
        row["select"] = _estimate(rec, "select", False, n_resamples, seed)
        # the unsteered model on select: what the chosen point had to beat where it was chosen
        row["select_baseline"] = _estimate(rec, "select", True, n_resamples, seed)
        row["report"] = _estimate(rec, "report", False, n_resamples, seed)
        row["baseline"] = _estimate(rec, "report", True, n_resamples, seed)
        steered, base_scores = load_scores(rec, "report"), load_scores(rec, "report", True)
        if rec.steered and steered and base_scores and steered.keys() & base_scores.keys():
            ids = sorted(steered.keys() & base_scores.keys())  # paired on shared items
            a, b = [steered[i] for i in ids], [base_scores[i] for i in ids]
            t = paired_test(a, b, n_resamples, seed=seed, binary=binary(rec.metric))
            row |= {"diff": t.diff, "p_value": t.p_value, "test": t.test}
        rows.append(row)
    return rows


def cells(row: Row) -> list[str]:
    """A row's cells under `COLUMNS`."""
    p = f"{row['p_value']:.3g} ({row['test']})" if row["p_value"] is not None else "-"
    n = row["report"].n if row["report"] is not None and row["report"].n else "-"
    fixed = [row[k] for k in ("task", "model", "method", "params", "metric")]
    values = [fmt(row[k]) for k in ("select", "select_baseline", "report", "baseline")]
    values.append(fmt(row["diff"], "+"))
    return [*fixed, *values, p, str(n), row["chosen_by"]]


def main_table(rows: Sequence[Row], n_resamples: int = 2000, seed: int = 0) -> Table:
    """The rows of `table` under their header: how the numbers were chosen and computed."""
    note = [HEADER.format(n=n_resamples, seed=seed)]
    return Table(TITLE, list(COLUMNS), [cells(r) for r in rows], note)
