"""Tables with bootstrap confidence intervals, and plots, over run and sweep directories.

    python -m sadi.report outputs/sweeps/<sweep> outputs/runs/<run> [--out report]

A path is a run directory (with `results.json`, from `python -m sadi.run`) or a directory above
run directories. Each directory below it holding a `selection.json` (from a select stage) is a
sweep: its chosen point is reported with the report metrics and samples named there. Other run
directories are grouped by (task, method, model); of a group of several points the best on the
select split is chosen. The report split never chooses. Writes `report.md`, `report.html`
(self-contained), and PNGs into `--out`; the markdown is also printed.

Modules: ``records`` (reading directories), ``stats`` (bootstrap CIs, paired tests); one
module per analysis, each returning a ``blocks.Table``: ``main_table`` (per record, select and
report with CIs, the paired delta), ``pivot`` (method x task deltas), ``arms`` (every arm
against the unsteered model and the best prompting arm), ``steerability`` (per-item slopes
over the strength, the share steered the wrong way), ``answers`` (answer
priors, the calibrated control), ``answer_form`` (answer length and flatness),
``side_effects``, ``judged`` (judged open-ended generations: scores, judge, rubric hash),
``generations``, ``features`` (SAS latents); ``render`` (Markdown and the
self-contained, sortable HTML),
``figures`` (captions, titles that fit), ``plots`` and ``heatmaps`` (PNGs), ``curves``
(behaviour curves, its own CLI), ``guard`` (never overwriting a report with one that drops
its rows: `--replace` to do so on purpose); ``main`` is the CLI.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from sadi.report.guard import check_not_lost, report_keys
from sadi.report.heatmaps import plot_deltas, plot_head_heatmap, plot_units
from sadi.report.main_table import table
from sadi.report.plots import plot_all, plot_methods, plot_strength
from sadi.report.records import Row, RunRecord, collect, load_run, load_samples, load_scores
from sadi.report.render import (
    analysis_tables,
    answer_form_section,
    answer_section,
    feature_sections,
    generation_section,
    pivot_markdown,
    report_markdown,
    side_effect_section,
    to_html,
    to_markdown,
)
from sadi.report.stats import Estimate, PairedTest, bootstrap_ci, paired_test

__all__ = [
    "Estimate",
    "PairedTest",
    "Row",
    "answer_form_section",
    "answer_section",
    "RunRecord",
    "bootstrap_ci",
    "collect",
    "load_run",
    "load_samples",
    "load_scores",
    "main",
    "paired_test",
    "plot_all",
    "plot_deltas",
    "plot_head_heatmap",
    "plot_methods",
    "plot_strength",
    "plot_units",
    "table",
    "to_html",
    "to_markdown",
    "feature_sections",
    "generation_section",
    "pivot_markdown",
    "side_effect_section",
]


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `python -m sadi.report DIR... [--out report] [--resamples 2000] [--seed 0]`."""
    ap = argparse.ArgumentParser(prog="python -m sadi.report", description=__doc__.split("\n")[0])
    ap.add_argument("paths", nargs="+", help="run directories or sweep directories")
    ap.add_argument("--out", default="report", help="output directory (default: ./report)")
    ap.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    ap.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    ap.add_argument(
        "--plots",
        choices=["all", "summary"],
        default="all",
        help="summary: only the per-task methods and the delta heatmap (for many tasks)",
    )
    ap.add_argument(
        "--replace",
        action="store_true",
        help="overwrite an existing report.md even where the new one drops rows it holds",
    )
    args = ap.parse_args(argv)
    records = collect(args.paths)
    rows = table(records, args.resamples, args.seed)
    out = Path(args.out)
    md = to_markdown(rows, args.resamples, args.seed)
    if (out / "report.md").exists():
        old = report_keys((out / "report.md").read_text())
        check_not_lost(out / "report.md", old, report_keys(md), args.replace)
    images = plot_all(records, rows, out, summary=args.plots == "summary")
    tables = analysis_tables(records)
    (out / "report.md").write_text(report_markdown(rows, images, tables, args.resamples, args.seed))
    (out / "report.html").write_text(to_html(rows, images, args.resamples, args.seed, tables))
    print(md + f"\nwrote report.md, report.html and {len(images)} PNGs to {out}", flush=True)
    return 0
