"""The pivot: a compact method x task table of report deltas, the unsteered level atop each
task's column."""

from __future__ import annotations

from collections.abc import Sequence

from sadi.report.blocks import Table
from sadi.report.records import Row

TITLE = "Report deltas, method x task"


def pivot_table(rows: Sequence[Row]) -> Table:
    """Per method, its report delta on each (task, model) (steered - unsteered, x100, with
    the paired test's marker: * p < 0.05); the unsteered report value heads each column."""
    tasks = sorted({(r["task"], r["model"]) for r in rows})
    methods = sorted({r["method"] for r in rows if r["method"] != "none"})
    cell: dict[tuple[str, str, str], Row] = {(r["task"], r["model"], r["method"]): r for r in rows}
    metric = {(r["task"], r["model"]): r["metric"] for r in rows}
    several = len({m for _, m in tasks}) > 1
    head = ["method", *(f"{t}{f' ({m})' if several else ''} [{metric[t, m]}]" for t, m in tasks)]
    base = ["unsteered"]
    for t, m in tasks:
        got = next((r for r in rows if (r["task"], r["model"]) == (t, m) and r["baseline"]), None)
        base.append(f"{100 * got['baseline'].value:.1f}" if got else "-")
    body = [base]
    for method in methods:
        cells = [method]
        for t, m in tasks:
            r = cell.get((t, m, method))
            if r is None or r["diff"] is None:
                cells.append("-")
                continue
            star = "*" if r["p_value"] is not None and r["p_value"] < 0.05 else ""
            cells.append(f"{100 * r['diff'].value:+.1f}{star}")
        body.append(cells)
    return Table(TITLE, head, body)
