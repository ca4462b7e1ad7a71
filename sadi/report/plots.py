"""Plots: select metric vs strength per sweep, methods side by side per task (SAS's lambda
beside CAA's multiplier), methods on the report split with CIs, and `plot_all`, which draws
every plot of a report (the heatmaps are in `heatmaps`).

Each `*_chart` function builds a `Chart` (titles wrapped to the figure, a caption in
words); each `plot_*` function saves one as a PNG and returns its path, or None where there
is nothing to draw (no numeric axis, no finite value).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from sadi.report.figures import Chart, fit_titles, save, slug
from sadi.report.heatmaps import plot_deltas, plot_head_heatmap, plot_units
from sadi.report.records import Row, RunRecord
from sadi.report.steerability import plot_steerability

INSIDE = 12.0  # a bar at least this tall (in %) carries its delta inside, else above


def _axes(points: Sequence[RunRecord]) -> tuple[str | None, list[str]]:
    """The x parameter and the parameters that tell lines apart, for a method's sweep."""
    varying = [k for k in points[0].params if len({repr(p.params.get(k)) for p in points}) > 1]
    x, line = points[0].axes or (None, None)
    numeric = [k for k in varying if all(isinstance(p.params.get(k), int | float) for p in points)]
    if x not in numeric:
        x = max(numeric, key=lambda k: len({p.params[k] for p in points}), default=None)
    lines = [k for k in varying if k != x]
    if line in points[0].params and line not in lines and line != x:
        lines.insert(0, line)
    return x, lines


def _select(p: RunRecord, metric: str) -> float:
    return 100 * p.metrics.get("select", {}).get(metric, math.nan)


def _drawable(points: Sequence[RunRecord]) -> tuple[str, list[str]] | None:
    """(x, lines) of a sweep worth a plot: a numeric axis and a finite select value."""
    x, lines = _axes(points) if len(points) > 1 else (None, [])
    if x is None or not any(math.isfinite(_select(p, points[0].metric)) for p in points):
        return None
    return x, lines


def _draw_sweep(
    ax: Any, rec: RunRecord, points: Sequence[RunRecord], x: str, lines: list[str], base_label: str
) -> None:
    """Select metric against `x`, a line per value of `lines`, and the unsteered level."""
    groups: dict[str, list[RunRecord]] = {}
    for p in points:
        groups.setdefault(", ".join(f"{k}={p.params.get(k)}" for k in lines), []).append(p)
    for label, pts in sorted(groups.items()):
        pts = sorted(pts, key=lambda p: p.params[x])
        ys = [_select(p, rec.metric) for p in pts]
        ax.plot([p.params[x] for p in pts], ys, marker="o", label=label or rec.method)
    base = rec.baseline_metrics.get("select", {}).get(rec.metric)
    if base is not None:
        ax.axhline(100 * base, color="gray", ls="--", label=base_label)


def _per_line(lines: Sequence[str]) -> str:
    return f", one line per {' and '.join(lines)}" if lines else ""


def strength_chart(points: Sequence[RunRecord], chosen: RunRecord | None = None) -> Chart | None:
    """Select-split metric vs the method's strength parameter, one line per K (or layer);
    None when the points do not vary a numeric parameter or hold no select value."""
    drawable = _drawable(points)
    if drawable is None:
        return None
    x, lines = drawable
    rec = points[0]
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    _draw_sweep(ax, rec, points, x, lines, "unsteered baseline")
    star = chosen is not None and x in chosen.params
    if star and chosen is not None:  # `star` alone does not narrow `chosen` for mypy
        ax.plot([chosen.params[x]], [_select(chosen, rec.metric)], "k*", ms=14, label="chosen")
    ax.set(xlabel=f"intervention.{x}", ylabel=f"select {rec.metric} (%)")
    ax.set_title(f"{rec.method} on {rec.task_label} ({rec.model}): select split vs {x}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    caption = (
        f"{rec.task_label}, {rec.method} ({rec.model}): select {rec.metric} against {x} "
        f"over {len(points)} points{_per_line(lines)}"
        + ("; star: the chosen point" if star else "")
        + "; dashed: the unsteered model."
    )
    return Chart(fit_titles(fig), caption)


def plot_strength(
    points: Sequence[RunRecord], path: str | Path, chosen: RunRecord | None = None
) -> Path | None:
    """`strength_chart` as a PNG at `path`; None where it draws none."""
    chart = strength_chart(points, chosen)
    return None if chart is None else save(chart, path)


def side_by_side_chart(records: Sequence[RunRecord], task: str) -> Chart | None:
    """One panel per method swept on `task` (e.g. SAS's lambda beside CAA's multiplier): its
    select metric against its own strength axis, the unsteered level dashed in every panel.
    None when fewer than two methods were swept on `task` along a numeric axis."""
    swept = [
        (rec, drawn)
        for rec in records
        if rec.task_label == task and len(rec.points) > 1
        if (drawn := _drawable(rec.points)) is not None
    ]
    if len(swept) < 2:
        return None
    fig = Figure(figsize=(5 * len(swept), 4.2))
    axes = fig.subplots(1, len(swept), sharey=True, squeeze=False)[0]
    for ax, (rec, (x, lines)) in zip(axes, swept):
        _draw_sweep(ax, rec, rec.points, x, lines, "unsteered")
        ax.set(xlabel=f"intervention.{x}", title=rec.method)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    first = swept[0][0]
    axes[0].set_ylabel(f"select {first.metric} (%)")
    fig.suptitle(f"{task} ({first.model}): each method against its strength")
    against = "; ".join(f"{rec.method} against {x}" for rec, (x, _) in swept)
    caption = (
        f"{task} ({first.model}): select {first.metric} of each swept method against its own "
        f"strength, one panel per method ({against}); dashed: the unsteered model."
    )
    return Chart(fit_titles(fig), caption)


def plot_methods_side_by_side(
    records: Sequence[RunRecord], path: str | Path, task: str
) -> Path | None:
    """`side_by_side_chart` as a PNG at `path`; None where it draws none."""
    chart = side_by_side_chart(records, task)
    return None if chart is None else save(chart, path)


def methods_chart(task: str, model: str, rs: Sequence[Row]) -> Chart:
    """Report metric per method of one (task, model) with 95% CI bars, each bar's unsteered
    level as a dashed line, its delta and paired p on it."""
    fig = Figure(figsize=(max(5.0, 1.3 * len(rs) + 2), 4.5))
    ax = fig.add_subplot()
    vals = [100 * r["report"].value for r in rs]
    errs = [
        [v - 100 * e.lo, 100 * e.hi - v]
        if e.lo is not None and e.hi is not None
        else [196 * (e.stderr or 0)] * 2  # no samples: +-1.96 stderr, bar hatched
        for v, e in zip(vals, (r["report"] for r in rs))
    ]
    bars = ax.bar(range(len(rs)), vals, yerr=np.array(errs).T, capsize=5, color="C0")
    for bar, r, v, (_, up) in zip(bars, rs, vals, errs):
        bar.set_hatch("" if r["report"].lo is not None else "//")
        if r["diff"] is not None:
            text = f"delta {100 * r['diff'].value:+.1f}\np={r['p_value']:.2g}"
            centre = bar.get_x() + bar.get_width() / 2
            if v >= INSIDE:  # white on the bar's blue
                ax.annotate(text, (centre, 2), ha="center", fontsize=8, color="white")
            else:  # a low bar: black above its error bar, where it is legible
                ax.annotate(text, (centre, v + up + 2), ha="center", fontsize=8, color="black")
    base = [(i, 100 * r["baseline"].value) for i, r in enumerate(rs) if r["baseline"]]
    if base:  # per bar, since runs of different limits or seeds may differ in baseline
        i, y = (np.array(v, dtype=float) for v in zip(*base))
        ax.hlines(y, i - 0.45, i + 0.45, colors="k", linestyles="--", label="unsteered")
        ax.legend(fontsize=9, loc="upper right")
    ax.set_xticks(range(len(rs)), [f"{r['method']}\n{r['params']}" for r in rs], fontsize=8)
    metric = rs[0]["metric"]
    ax.set(ylabel=f"report {metric} (%)", ylim=(0, 100))
    hatched = any(r["report"].lo is None for r in rs)
    if hatched:
        ax.set_xlabel("hatched: no per-item samples; error bar = 1.96 x stderr", fontsize=8)
    ax.set_title(f"{task} ({model}): report split, 95% bootstrap CI")
    names = ", ".join(r["method"] for r in rs)
    caption = (
        f"{task} ({model}): report {metric} per method ({names}) with 95% bootstrap CIs; "
        "dashed: the unsteered model; on each bar its delta and paired p"
        + ("; hatched: no per-item samples (error bar 1.96 x stderr)." if hatched else ".")
    )
    return Chart(fit_titles(fig), caption)


def plot_methods(rows: Sequence[Row], out_dir: str | Path) -> list[Path]:
    """Per (task, model): `methods_chart` of its rows with a report value, as PNGs."""
    out = Path(out_dir)
    by_task: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        if r["report"] is not None:
            by_task.setdefault((r["task"], r["model"]), []).append(r)
    return [
        save(methods_chart(task, model, rs), out / f"methods_{slug(task)}_{slug(model)}.png")
        for (task, model), rs in by_task.items()
    ]


def plot_all(
    records: Sequence[RunRecord], rows: Sequence[Row], out_dir: str | Path, summary: bool = False
) -> list[Path]:
    """Every plot for these records into `out_dir`: strength sweeps, head heatmaps, AUSteer
    units, methods side by side, methods with CIs, the delta heatmap. `summary`: only the
    last two (a study of many tasks would otherwise write hundreds of PNGs)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if summary:
        return plot_deltas(rows, out) + plot_methods(rows, out) + plot_steerability(records, out)
    paths: list[Path] = []
    for i, rec in enumerate(records):
        stem = f"{slug(rec.task_label)}_{slug(rec.method)}_{i}"
        about = f"{rec.task_label}, {rec.method} ({rec.model})"
        if rec.points and (p := plot_strength(rec.points, out / f"strength_{stem}.png", rec)):
            paths.append(p)
        if rec.steerer_dir is None:
            continue
        if p := plot_head_heatmap(rec.steerer_dir, out / f"heads_{stem}.png", about):
            paths.append(p)
        if p := plot_units(rec.steerer_dir, out / f"units_{stem}.png", about):
            paths.append(p)
    for task in sorted({r.task_label for r in records}):
        if p := plot_methods_side_by_side(records, out / f"methods_{slug(task)}.png", task):
            paths.append(p)
    paths += plot_steerability(records, out)
    return paths + plot_methods(rows, out) + plot_deltas(rows, out)
