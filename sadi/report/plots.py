"""Plots: select metric vs strength per sweep, methods side by side per task (SAS's lambda
beside CAA's multiplier), per-head score heatmaps, AUSteer unit momentum, methods with CIs."""

from __future__ import annotations

import json
import math
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure  # no pyplot: no global state; PNGs render with Agg
from matplotlib.patches import Rectangle
from safetensors.numpy import load_file

from sadi.report.records import RunRecord
from sadi.report.tables import Row


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


def _draw_sweep(
    ax: Any, rec: RunRecord, points: Sequence[RunRecord], x: str, lines: list[str], base_label: str
) -> None:
    """Select metric against `x`, a line per value of `lines`, and the unsteered level."""
    groups: dict[str, list[RunRecord]] = {}
    for p in points:
        groups.setdefault(", ".join(f"{k}={p.params.get(k)}" for k in lines), []).append(p)
    for label, pts in sorted(groups.items()):
        pts = sorted(pts, key=lambda p: p.params[x])
        ys = [100 * p.metrics.get("select", {}).get(rec.metric, math.nan) for p in pts]
        ax.plot([p.params[x] for p in pts], ys, marker="o", label=label or rec.method)
    base = rec.baseline_metrics.get("select", {}).get(rec.metric)
    if base is not None:
        ax.axhline(100 * base, color="gray", ls="--", label=base_label)


def plot_strength(
    points: Sequence[RunRecord], path: str | Path, chosen: RunRecord | None = None
) -> Path | None:
    """Select-split metric vs the method's strength parameter, one line per K (or layer).

    Returns the PNG path, or None when the points do not vary a numeric parameter.
    """
    x, lines = _axes(points) if len(points) > 1 else (None, [])
    if x is None:
        return None
    rec = points[0]
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    _draw_sweep(ax, rec, points, x, lines, "unsteered baseline")
    if chosen is not None and x in chosen.params:
        y = 100 * chosen.metrics.get("select", {}).get(rec.metric, math.nan)
        ax.plot([chosen.params[x]], [y], "k*", ms=14, label="chosen", zorder=5)
    ax.set(xlabel=f"intervention.{x}", ylabel=f"select {rec.metric} (%)")
    ax.set_title(f"{rec.method} on {rec.task_label} ({rec.model}): select split vs {x}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    return _save(fig, path)


def plot_methods_side_by_side(
    records: Sequence[RunRecord], path: str | Path, task: str
) -> Path | None:
    """One panel per method swept on `task` (e.g. SAS's lambda beside CAA's multiplier): its
    select metric against its own strength axis, the unsteered level dashed in every panel.

    Returns the PNG path, or None when fewer than two methods were swept on `task`.
    """
    swept = [r for r in records if r.task_label == task and len(r.points) > 1]
    if len(swept) < 2:
        return None
    fig = Figure(figsize=(5 * len(swept), 4.2))
    axes = fig.subplots(1, len(swept), sharey=True, squeeze=False)[0]
    for ax, rec in zip(axes, swept):
        x, lines = _axes(rec.points)
        if x is None:
            continue
        _draw_sweep(ax, rec, rec.points, x, lines, "unsteered")
        ax.set(xlabel=f"intervention.{x}", title=rec.method)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel(f"select {swept[0].metric} (%)")
    fig.suptitle(f"{task} ({swept[0].model}): each method against its strength")
    return _save(fig, path)


def plot_head_heatmap(steerer_dir: str | Path, path: str | Path) -> Path | None:
    """Layer x head grid of fitted head scores (SADI delta, ITI probe accuracy), mask outlined.

    Returns the PNG path, or None for steerers without per-head scores (CAA, SADI on
    other components).
    """
    d = Path(steerer_dir)
    meta = json.loads((d / "steerer.json").read_text())
    t = load_file(str(d / "steerer.safetensors"))
    method = meta["method"]
    if method.startswith("iti") and "accuracy" in t:
        scores, cmap, label, edge = t["accuracy"], "viridis", "probe accuracy", "red"
        vmin, vmax = float(scores.min()), float(scores.max())
    elif method.startswith("sadi") and meta.get("component") == "head" and "delta" in t:
        scores, cmap, edge = t["delta"], "RdBu_r", "black"
        label, vmax = "mean activation difference (pos - neg)", float(np.abs(t["delta"]).max())
        vmin = -vmax
    else:
        return None
    n_layers, n_heads = scores.shape
    fig = Figure(figsize=(max(6.0, 0.28 * n_layers + 2.5), max(3.0, 0.3 * n_heads + 1.8)))
    ax = fig.add_subplot()
    im = ax.imshow(scores.T, aspect="auto", origin="lower", cmap=cmap, vmin=vmin, vmax=vmax)
    for layer, head in np.argwhere(t["mask"]):
        ax.add_patch(Rectangle((layer - 0.5, head - 0.5), 1, 1, fill=False, ec=edge, lw=2))
    ax.set_xticks(range(0, n_layers, 1 if n_layers <= 32 else 4))
    ax.set_yticks(range(0, n_heads, 1 if n_heads <= 16 else 4))
    ax.set(xlabel="layer", ylabel="head")
    n_sel, model = int(t["mask"].sum()), meta.get("model_id", "")
    ax.set_title(f"{method.upper()} head scores, {n_sel} selected outlined ({model})", fontsize=10)
    fig.colorbar(im, ax=ax, label=label, fraction=0.05, pad=0.02)
    return _save(fig, path)


def plot_units(steerer_dir: str | Path, path: str | Path) -> Path | None:
    """AUSteer: activation momentum beta of every atomic unit [layer x dimension], the k
    selected units marked, and the number selected per layer.

    Returns the PNG path, or None for other steerers.
    """
    import torch

    from sadi.steerers.austeer import select_units

    d = Path(steerer_dir)
    meta = json.loads((d / "steerer.json").read_text())
    if meta["method"] != "austeer":
        return None
    t = load_file(str(d / "steerer.safetensors"))
    beta, mean_diff = t["beta"], t["mean_diff"]
    variant = meta.get("variant", "momentum")
    layers, dims = select_units(
        torch.from_numpy(beta),
        torch.from_numpy(mean_diff),
        int(meta["k"]),
        variant,
        int(meta.get("seed", 0)),
    )
    n_layers, width = beta.shape
    fig = Figure(figsize=(max(7.0, 0.25 * n_layers + 3), 6.5))
    top, bottom = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    im = top.imshow(
        beta.T,
        aspect="auto",
        origin="lower",
        cmap="RdBu_r",
        vmin=-1,
        vmax=1,
        interpolation="nearest",
    )
    top.scatter(layers.numpy(), dims.numpy(), marker="x", s=18, c="k", lw=1)
    top.set(ylabel=f"{meta.get('component', '')} dimension")
    model = meta.get("model_id", "")
    top.set_title(
        f"AUSteer activation momentum, {len(layers)} units selected (x), variant {variant} "
        f"({model})",
        fontsize=10,
    )
    counts = np.bincount(layers.numpy(), minlength=n_layers)
    bottom.bar(range(n_layers), counts, color="C0")
    bottom.set(xlabel="layer", ylabel="units selected")
    bottom.set_xticks(range(0, n_layers, 1 if n_layers <= 32 else 4))
    fig.colorbar(im, ax=[top, bottom], label="beta", fraction=0.04, pad=0.02)
    fig.savefig(path, dpi=120)  # no tight_layout: it cannot place a colorbar of two axes
    return Path(path)


def plot_methods(rows: Sequence[Row], out_dir: str | Path) -> list[Path]:
    """Per (task, model): report metric per method with 95% CI bars, baseline as a line."""
    out, paths = Path(out_dir), []
    by_task: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        if r["report"] is not None:
            by_task.setdefault((r["task"], r["model"]), []).append(r)
    for (task, model), rs in by_task.items():
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
        for bar, r in zip(bars, rs):
            bar.set_hatch("" if r["report"].lo is not None else "//")
            if r["diff"] is not None:
                text = f"delta {100 * r['diff'].value:+.1f}\np={r['p_value']:.2g}"
                xy = (bar.get_x() + bar.get_width() / 2, 2)
                ax.annotate(text, xy, ha="center", fontsize=8, color="white")
        base = [(i, 100 * r["baseline"].value) for i, r in enumerate(rs) if r["baseline"]]
        if base:  # per bar, since runs of different limits or seeds may differ in baseline
            i, y = (np.array(v, dtype=float) for v in zip(*base))
            ax.hlines(y, i - 0.45, i + 0.45, colors="k", linestyles="--", label="unsteered")
        ax.set_xticks(range(len(rs)), [f"{r['method']}\n{r['params']}" for r in rs], fontsize=8)
        ax.set(ylabel=f"report {rs[0]['metric']} (%)", ylim=(0, 100))
        if any(r["report"].lo is None for r in rs):
            ax.set_xlabel("hatched: no per-item samples; error bar = 1.96 x stderr", fontsize=8)
        ax.set_title(f"{task} ({model}): report split, 95% bootstrap CI")
        ax.legend(fontsize=9, loc="upper right")
        paths.append(_save(fig, out / f"methods_{slug(task)}_{slug(model)}.png"))
    return paths


def plot_deltas(rows: Sequence[Row], out_dir: str | Path) -> list[Path]:
    """Per model: a method x task heatmap of report deltas (steered - unsteered, x100, each
    in its task's metric), a star where the paired test gives p < 0.05. A model with one
    task gets none (a heatmap of one column says less than the methods plot beside it)."""
    out, paths = Path(out_dir), []
    for model in sorted({r["model"] for r in rows}):
        mine = [r for r in rows if r["model"] == model and r["diff"] is not None]
        if len({r["task"] for r in mine}) < 2:
            continue
        paths.append(_save(delta_figure(model, mine), out / f"deltas_{slug(model)}.png"))
    return paths


def delta_figure(model: str, rows: Sequence[Row]) -> Figure:
    """The heatmap of `plot_deltas` for one model's rows: the title wrapped to the figure's
    width, each value in white on dark cells and black on light ones."""
    tasks = sorted({r["task"] for r in rows})
    methods = sorted({r["method"] for r in rows})
    grid = np.full((len(methods), len(tasks)), np.nan)
    for r in rows:
        grid[methods.index(r["method"]), tasks.index(r["task"])] = 100 * r["diff"].value
    width = max(6.0, 1.1 * len(tasks) + 3)
    fig = Figure(figsize=(width, 0.5 * len(methods) + 2.4))
    ax = fig.add_subplot()
    lim = max(1.0, float(np.nanmax(np.abs(grid))))
    cmap = colormaps["RdBu"].with_extremes(bad="#e0e0e0")  # grey: not run
    im = ax.imshow(grid, cmap=cmap, vmin=-lim, vmax=lim, aspect="auto")
    for r in rows:
        i, j = methods.index(r["method"]), tasks.index(r["task"])
        sig = r["p_value"] is not None and r["p_value"] < 0.05
        cell = cmap((grid[i, j] + lim) / (2 * lim))
        ax.text(
            j,
            i,
            f"{grid[i, j]:+.1f}{'*' if sig else ''}",
            ha="center",
            va="center",
            fontsize=8,
            color=text_color(cell),
        )
    ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(methods)), methods, fontsize=8)
    title = f"{model}: report delta vs unsteered (x100; * paired p < 0.05)"
    ax.set_title(textwrap.fill(title, width=int(width * 9)), fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    return fig


def luminance(rgba: Sequence[float]) -> float:
    """WCAG relative luminance of an RGB(A) colour with channels in [0, 1]."""

    def channel(c: float) -> float:
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(float(c)) for c in rgba[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: Sequence[float], b: Sequence[float]) -> float:
    """WCAG contrast ratio of two colours (1 to 21)."""
    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def text_color(background: Sequence[float]) -> str:
    """Black or white, whichever reads better on `background`."""
    black, white = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return "black" if contrast(background, black) >= contrast(background, white) else "white"


def _save(fig: Figure, path: str | Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return Path(path)


def slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)


def plot_all(
    records: Sequence[RunRecord], rows: Sequence[Row], out_dir: str | Path, summary: bool = False
) -> list[Path]:
    """Every plot for these records into `out_dir`: strength sweeps, head heatmaps, AUSteer
    units, methods side by side, methods with CIs, the delta heatmap. `summary`: only the
    last two (a study of many tasks would otherwise write hundreds of PNGs)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if summary:
        return plot_deltas(rows, out) + plot_methods(rows, out)
    paths: list[Path] = []
    for i, rec in enumerate(records):
        stem = f"{slug(rec.task_label)}_{slug(rec.method)}_{i}"
        if rec.points and (p := plot_strength(rec.points, out / f"strength_{stem}.png", rec)):
            paths.append(p)
        if rec.steerer_dir and (p := plot_head_heatmap(rec.steerer_dir, out / f"heads_{stem}.png")):
            paths.append(p)
        if rec.steerer_dir and (p := plot_units(rec.steerer_dir, out / f"units_{stem}.png")):
            paths.append(p)
    for task in sorted({r.task_label for r in records}):
        if p := plot_methods_side_by_side(records, out / f"methods_{slug(task)}.png", task):
            paths.append(p)
    return paths + plot_methods(rows, out) + plot_deltas(rows, out)
