"""Generations ("Generations"): the first open-ended prompts with the unsteered and the
steered answer side by side (no judge: saved for reading)."""

from __future__ import annotations

from collections.abc import Sequence

from sadi.infra.jsonio import read_jsonl
from sadi.pipeline.results import generations_file
from sadi.report.blocks import Table, text_cell
from sadi.report.records import RunRecord

TITLE = "Generations"
COLUMNS = ["task", "method", "prompt", "unsteered", "steered"]


def generation_table(records: Sequence[RunRecord], n: int = 3) -> Table | None:
    """The first `n` prompts of each record that generated on open-ended prompts; None when
    none did."""
    note = (
        f"Greedy answers to the first {n} open-ended prompts, unsteered and steered (all of "
        "them are in each report run's generations_<task>*.jsonl)."
    )
    out = Table(TITLE, list(COLUMNS), note=[note])
    for rec in records:
        d = rec.sample_dirs.get("report", rec.run_dir)
        steered, base = (d / generations_file(rec.task), d / generations_file(rec.task, True))
        if not (steered.exists() and base.exists()):
            continue
        a = read_jsonl(steered)
        b = {r["id"]: r for r in read_jsonl(base)}
        for row in a[:n]:
            other = b.get(row["id"], {}).get("generation", "")
            cells = [text_cell(row["prompt"], 160), text_cell(other), text_cell(row["generation"])]
            out.rows.append([rec.task_label, rec.method, *cells])
    return out if out.rows else None
