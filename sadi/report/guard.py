"""Refuses to overwrite a written report with one that would drop the rows it already holds."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

Key = tuple[str, str, str]  # (task, model, method)


def report_keys(md: str) -> Counter[Key]:
    """(task, model, method) of every row of a report.md's main table (its first table),
    counted: one report may hold a method twice (e.g. at two layers)."""
    keys: Counter[Key] = Counter()
    lines = iter(md.splitlines())
    for line in lines:
        if line.startswith("| task | model | method |"):
            next(lines, None)  # the |---| line
            for row in lines:
                if not row.startswith("| "):
                    return keys
                task, model, method = (c.strip() for c in row.strip("|").split("|")[:3])
                keys[(task, model, method)] += 1
    return keys


def curve_keys(curves: Iterable[dict[str, Any]]) -> Counter[Key]:
    """(task, model, method) of every curve of a curves.json's list, counted."""
    return Counter((c["task"], c["model"], c["method"]) for c in curves)


def check_not_lost(path: Path, old: Counter[Key], new: Counter[Key], replace: bool) -> None:
    """Raise if writing `new` over `path` (which holds `old`) would drop rows, unless
    `replace`: the message names the rows and the ways out."""
    lost = sorted((old - new).elements())
    if not lost or replace:
        return
    shown = "; ".join(" / ".join(k) for k in lost[:12]) + (" ..." if len(lost) > 12 else "")
    raise SystemExit(
        f"not overwriting {path}: it holds {len(lost)} row(s) that the directories given do not "
        f"(task/model/method): {shown}. Pass their sweep directories too (re-run them if they "
        "are gone), write elsewhere with --out, or pass --replace to drop them on purpose."
    )
