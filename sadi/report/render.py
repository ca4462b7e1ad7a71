"""The report as Markdown and as one self-contained HTML page, from the `Table`s of its
analyses and the PNGs of its plots (their captions read from the PNGs).

A report is the main table, its figures, the method x task pivot, then the other analyses'
sections (the HTML puts the pivot, a summary, before the figures). In the HTML every table
sorts by a click on a column header (a small inline script; nothing is fetched).
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from pathlib import Path

from sadi.report.answer_form import answer_form_table
from sadi.report.answers import answer_table
from sadi.report.arms import arms_table
from sadi.report.blocks import Table
from sadi.report.features import feature_tables
from sadi.report.figures import alt_text, caption
from sadi.report.generations import generation_table
from sadi.report.judged import judged_table
from sadi.report.main_table import main_table
from sadi.report.pivot import pivot_table
from sadi.report.records import Row, RunRecord
from sadi.report.side_effects import side_effect_table
from sadi.report.steerability import steerability_table

Section = tuple[str, str]  # (title, Markdown body)
NUMBER = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?", re.IGNORECASE)
SHORT = 40  # a number followed by at most this much (its CI, test, share) is a value cell
MAIN = "Chosen points"  # the main table's heading in the HTML (the page is titled by it)


# ----- Markdown ------------------------------------------------------------------------------
def markdown(t: Table) -> str:
    """The table's note, a blank line, then the pipe table (the note left out when empty)."""
    lines = ["| " + " | ".join(t.columns) + " |", "|" + "---|" * len(t.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in t.rows]
    return "\n".join([*t.note, "", *lines] if t.note else lines)


def sections(tables: Sequence[Table | None]) -> list[Section]:
    """(title, Markdown) of each table present."""
    return [(t.title, markdown(t)) for t in tables if t is not None]


def to_markdown(rows: Sequence[Row], n_resamples: int = 2000, seed: int = 0) -> str:
    """The main table as GitHub markdown, headed by how the numbers were chosen and
    computed."""
    t = main_table(rows, n_resamples, seed)
    return f"# {t.title}\n\n{markdown(t)}\n"


def pivot_markdown(rows: Sequence[Row]) -> str:
    """The method x task pivot of report deltas (`pivot.pivot_table`) as a pipe table."""
    return markdown(pivot_table(rows)) + "\n"


def answer_section(records: Sequence[RunRecord]) -> list[Section]:
    """[("Answers", Markdown)] for multiple-choice reports (`answers.answer_table`), or []."""
    return sections([answer_table(records)])


def answer_form_section(records: Sequence[RunRecord]) -> list[Section]:
    """[("Answer form", Markdown)] (`answer_form.answer_form_table`), or []."""
    return sections([answer_form_table(records)])


def side_effect_section(records: Sequence[RunRecord]) -> list[Section]:
    """[("Side effects", Markdown)] (`side_effects.side_effect_table`), or []."""
    return sections([side_effect_table(records)])


def generation_section(records: Sequence[RunRecord], n: int = 3) -> list[Section]:
    """[("Generations", Markdown)] of the first `n` prompts (`generations`), or []."""
    return sections([generation_table(records, n)])


def feature_sections(records: Sequence[RunRecord], top: int = 10) -> list[Section]:
    """(title, Markdown) per run whose steerer wrote `features.json` (`features`)."""
    return sections(feature_tables(records, top))


def analysis_tables(records: Sequence[RunRecord]) -> list[Table]:
    """The tables of every analysis after the pivot, in the report's order."""
    found = [
        arms_table(records),
        steerability_table(records),
        answer_table(records),
        answer_form_table(records),
        side_effect_table(records),
        judged_table(records),
    ]
    return [t for t in [*found, generation_table(records)] if t] + feature_tables(records)


def report_markdown(
    rows: Sequence[Row],
    images: Sequence[Path] = (),
    tables: Sequence[Table] = (),
    n_resamples: int = 2000,
    seed: int = 0,
) -> str:
    """report.md: the main table, each image under its caption, the pivot, `tables`."""
    md = to_markdown(rows, n_resamples, seed)
    md += "".join(f"\n![{alt_text(p)}]({p.name})\n" for p in images)
    parts: list[Section] = [(pivot_table(rows).title, pivot_markdown(rows)), *sections(tables)]
    return md + "".join(f"\n## {title}\n\n{body}\n" for title, body in parts)


# ----- HTML ----------------------------------------------------------------------------------
STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1d2330;
 background:#f4f6f9;line-height:1.45}
header{background:#1f3a5f;color:#fff;padding:1.2em 2em}
header h1{margin:0 0 .3em}header p{margin:.3em 0;max-width:70em;color:#dde6f2}
nav a{color:#fff;margin-right:1.2em}
main{padding:1em 2em 3em}
section{background:#fff;border:1px solid #dde2ea;border-radius:8px;padding:1em 1.2em;
 margin:1.2em 0}
h2{margin:.2em 0 .6em;font-size:1.25em}
p.note{max-width:70em;color:#444;font-size:14px}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #d5dae3;padding:4px 7px;text-align:left;vertical-align:top}
th{background:#e9eef5}
tbody tr:nth-child(even){background:#f7f9fc}tbody tr:hover{background:#fff7d6}
td.num{font-variant-numeric:tabular-nums}td.num .v{white-space:nowrap;font-weight:600}
td.num .ci{color:#5d6778;font-size:.92em}.nw{white-space:nowrap}
td.long{overflow-wrap:anywhere;min-width:14em}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th:hover{background:#d8e2ef}
table.sortable th::after{content:"\\2195";color:#8a94a6;margin-left:.4em;font-size:.9em}
table.sortable th[aria-sort=ascending]::after{content:"\\25B2";color:#1f3a5f}
table.sortable th[aria-sort=descending]::after{content:"\\25BC";color:#1f3a5f}
.figs{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:16px}
figure{margin:0;border:1px solid #e1e5ec;border-radius:6px;padding:8px;background:#fff}
figure img{width:100%;height:auto;display:block}
figcaption{font-size:13px;color:#333;margin-top:6px}
code{background:#eef1f5;padding:0 3px;border-radius:3px}
"""
SCRIPT = """
(function () {
  var NUMBER = /^\\s*[+-]?(\\d+\\.?\\d*|\\.\\d+)(e[+-]?\\d+)?/i, MISSING = ["", "-", "n/a"];
  function key(row, col) {
    var text = row.cells[col] ? row.cells[col].textContent.trim() : "";
    var m = text.match(NUMBER);
    return {text: text, num: m ? parseFloat(m[0]) : null, missing: MISSING.indexOf(text) >= 0};
  }
  function sortBy(table, col, th) {
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    var dir = th.getAttribute("aria-sort") === "ascending" ? "descending" : "ascending";
    var sign = dir === "ascending" ? 1 : -1;
    var keys = rows.map(function (r) { return key(r, col); });
    var numeric = keys.some(function (k) { return k.num !== null; }) &&
      keys.every(function (k) { return k.num !== null || k.missing; });
    var order = rows.map(function (_, i) { return i; });
    order.sort(function (a, b) {
      var x = keys[a], y = keys[b];
      if (x.missing !== y.missing) { return x.missing ? 1 : -1; }  // empty cells last
      var c = numeric ? x.num - y.num
        : x.text.localeCompare(y.text, undefined, {numeric: true, sensitivity: "base"});
      return sign * c || a - b;
    });
    order.forEach(function (i) { body.appendChild(rows[i]); });
    table.querySelectorAll("thead th").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir);
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("thead th").forEach(function (th, col) {
      th.tabIndex = 0;
      th.title = "Sort by " + th.textContent + " (click again to reverse)";
      th.addEventListener("click", function () { sortBy(table, col, th); });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(table, col, th); }
      });
    });
  });
})();
"""


def _inline(text: str) -> str:
    """Escaped text with Markdown's **bold** and `code` kept as HTML."""
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text))
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def anchor(title: str) -> str:
    """An HTML id for a section title."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"


def table_html(t: Table) -> str:
    """A sortable table under `t.columns`: a cell opening with a number shows it bold, its
    CI or test greyed beside it; long text may break anywhere rather than widen the page."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t.columns)

    def cell(c: str) -> str:
        m = NUMBER.match(c)
        if m is None or len(c) - m.end() > SHORT:  # text, perhaps opening with a number
            kind = ' class="long"' if len(c) > 2 * SHORT else ""
            return f"<td{kind}>{html.escape(c)}</td>"
        # the value on its own; its CI or test may wrap below it, greyed, in a narrow window,
        # but never inside a CI's brackets
        value, rest = c[: m.end()], c[m.end() :]
        gap = " " if rest[:1].isspace() else ""  # "+1.5*" stays whole, "+1.5 [..]" may wrap
        ci = re.sub(r"\[[^\]]*\]", r'<span class="nw">\g<0></span>', html.escape(rest.strip()))
        extra = f'{gap}<span class="ci">{ci}</span>' if rest else ""
        return f'<td class="num"><span class="v">{html.escape(value)}</span>{extra}</td>'

    body = "".join("<tr>" + "".join(map(cell, r)) + "</tr>\n" for r in t.rows)
    return (
        f'<div class="scroll"><table class="sortable"><thead><tr>{head}</tr></thead>\n'
        f"<tbody>\n{body}</tbody></table></div>"
    )


def _section_html(t: Table, title: str | None = None, note: bool = True) -> str:
    """The table under its title (`title` in its place) and, with `note`, its note."""
    text = "".join(f'<p class="note">{_inline(line)}</p>' for line in t.note) if note else ""
    head = f"<h2>{html.escape(title or t.title)}</h2>"
    return f'<section id="{anchor(title or t.title)}">{head}{text}\n{table_html(t)}</section>\n'


def _figures_html(images: Sequence[Path]) -> str:
    if not images:
        return ""
    figs = "".join(
        f'<figure><img src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}"'
        f' alt="{html.escape(text)}"><figcaption>{html.escape(text)}</figcaption></figure>\n'
        for p, text in ((p, caption(p)) for p in images)
    )
    return f'<section id="figures"><h2>Figures</h2><div class="figs">\n{figs}</div></section>\n'


def to_html(
    rows: Sequence[Row],
    images: Sequence[Path] = (),
    n_resamples: int = 2000,
    seed: int = 0,
    sections: Sequence[Table] = (),
) -> str:
    """A self-contained HTML page: the main table (its note heading the page), the pivot,
    the PNGs embedded as data URIs under their captions, then `sections`; every table
    sortable by its headers."""
    main = main_table(rows, n_resamples, seed)
    pivot = pivot_table(rows)
    links = [(MAIN, anchor(MAIN)), (pivot.title, anchor(pivot.title))]
    links += [("Figures", "figures")] if images else []
    links += [(t.title, anchor(t.title)) for t in sections]
    nav = " ".join(f'<a href="#{a}">{html.escape(name)}</a>' for name, a in links)
    note = "".join(f"<p>{_inline(line)}</p>" for line in main.note)
    hint = "<p>Click a column header to sort a table by it; click it again to reverse.</p>"
    parts = [_section_html(main, MAIN, note=False), _section_html(pivot), _figures_html(images)]
    parts += [_section_html(t) for t in sections]
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(main.title)}</title><style>{STYLE}</style></head><body>\n"
        f"<header><h1>{html.escape(main.title)}</h1>{note}{hint}<nav>{nav}</nav></header>\n"
        f"<main>\n{''.join(parts)}</main>\n<script>{SCRIPT}</script>\n</body></html>\n"
    )
