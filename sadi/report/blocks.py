"""What every analysis of the report returns, `Table`, and the cell formats they share.

An analysis (`main_table`, `pivot`, `answers`, `answer_form`, `side_effects`, `judged`,
`generations`, `features`) computes its cells as strings; `render` alone turns a `Table`
into Markdown or HTML. The kind of a metric (0/1 per item or a probability) is read from
the one metric table, `sadi.eval.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from numpy.typing import ArrayLike

from sadi.eval.metrics import METRICS
from sadi.report.stats import Estimate, paired_test


@dataclass(frozen=True)
class Table:
    """A titled table: its paragraphs above (`note`, one per line), its header and its rows
    of cells (strings, as the Markdown shows them)."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    note: list[str] = field(default_factory=list)


def binary(metric: str) -> bool | None:
    """Whether `metric` scores each item 0 or 1 (`METRICS[metric].binary`: the paired test is
    then an exact McNemar); None for a metric the table does not name (the test reads the
    scores)."""
    known = METRICS.get(metric)
    return None if known is None else known.binary


def fmt(e: Estimate | None, sign: str = "") -> str:
    """'v [lo, hi]' x100 with a CI, 'v +- se (CI n/a)' with a stderr only, '-' for none."""
    if e is None:
        return "-"
    v = f"{100 * e.value:{sign}.1f}"
    if e.lo is not None and e.hi is not None:
        return f"{v} [{100 * e.lo:{sign}.1f}, {100 * e.hi:{sign}.1f}]"
    return f"{v} +- {100 * e.stderr:.1f} (CI n/a)" if e.stderr is not None else f"{v} (CI n/a)"


def paired_cell(
    a: ArrayLike,
    b: ArrayLike,
    digits: int = 1,
    scale: float = 1.0,
    binary: bool | None = None,
) -> str:
    """'a - b [CI], p=..' from `paired_test` (exact McNemar for 0/1 scores, else paired
    bootstrap; `binary` as there), the difference and its CI multiplied by `scale` (100 for
    a metric x100)."""
    t = paired_test(a, b, binary=binary)
    d = t.diff
    assert d.lo is not None and d.hi is not None  # a bootstrap CI has both ends
    v, lo, hi = scale * d.value, scale * d.lo, scale * d.hi
    return f"{v:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}], p={t.p_value:.3g}"


def text_cell(text: str, limit: int = 240) -> str:
    """One line of a Markdown table cell: the chat template's markup and newlines folded,
    '|' (a cell boundary) written '/', the end kept when longer than `limit`."""
    flat = " ".join(str(text).replace("|", "/").split())
    return flat if len(flat) <= limit else "..." + flat[-limit:]
