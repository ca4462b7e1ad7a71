"""Side effects ("Side effects"): each chosen steerer scored on other tasks, steered and
unsteered: the capability cost of steering next to its effect."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sadi.eval.metrics import SCORINGS
from sadi.infra.jsonio import read_jsonl
from sadi.pipeline.results import samples_file
from sadi.report.blocks import Table, binary, paired_cell
from sadi.report.records import RunRecord

TITLE = "Side effects"
NOTE = (
    "Each chosen steerer also scored on other tasks (never fit or selected on), with and "
    "without steering; delta x100 with its 95% paired-bootstrap CI and exact McNemar p "
    "where the per-item samples are kept."
)
COLUMNS = ["task", "method", "side task", "split (items)", "metric", "steered", "unsteered"]
COLUMNS += ["delta"]


def side_metric(scores: dict[str, Any]) -> str | None:
    """The metric a side task is shown in: the primary metric of the scoring
    (`sadi.eval.metrics.SCORINGS`) whose metrics its scores hold most of (acc for one label
    per item, mc2 for several true answers); None when they hold no scoring's primary."""
    held = [s for s in SCORINGS.values() if s.metrics[0] in scores]
    if not held:
        return None
    return max(held, key=lambda s: sum(m in scores for m in s.metrics)).metrics[0]


def _side_delta(rec: RunRecord, side: str, split: str, metric: str, st: float, base: float) -> str:
    """steered - unsteered on a side task, x100: with its paired CI and p (exact McNemar for
    0/1 scores) where the per-item samples lie beside the run, else the bare difference."""
    bare = f"{100 * (st - base):+.1f}"
    d = rec.sample_dirs.get("report", rec.run_dir)
    files = [d / samples_file(f"side_{side}", split, unsteered) for unsteered in (False, True)]
    if not all(f.exists() for f in files):
        return bare
    steered, unsteered = ({str(r["id"]): r for r in read_jsonl(f)} for f in files)
    if set(steered) != set(unsteered) or not all(metric in r for r in steered.values()):
        return bare
    ids = sorted(steered)
    a, b = ([float(r[i][metric]) for i in ids] for r in (steered, unsteered))
    return paired_cell(a, b, scale=100, binary=binary(metric))


def side_effect_table(records: Sequence[RunRecord]) -> Table | None:
    """One row per (record, side task) it was scored on; None when no record has any."""
    out = Table(TITLE, list(COLUMNS), note=[NOTE])
    for rec in records:
        for side, got in sorted(rec.side_effects.items()):
            metric = side_metric(got.get("baseline", {}))
            if metric is None:
                continue
            st, base = got["steered"].get(metric), got["baseline"].get(metric)
            if st is None or base is None:
                continue
            out.rows.append(
                [
                    rec.task_label,
                    rec.method,
                    side,
                    f"{got['split']} ({got['n_items']})",
                    metric,
                    f"{100 * st:.1f}",
                    f"{100 * base:.1f}",
                    _side_delta(rec, side, got["split"], metric, st, base),
                ]
            )
    return out if out.rows else None
