"""Heatmaps: fitted per-head scores (SADI, ITI), AUSteer's unit momentum, and the method x
task grid of report deltas; with the colour contrast that keeps their numbers legible.

A grid of one cell says less than a number: none is drawn (the functions return None).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from safetensors.numpy import load_file

from sadi.report.figures import Chart, fit_titles, save, slug
from sadi.report.records import Row


def heads_chart(steerer_dir: str | Path, about: str | None = None) -> Chart | None:
    """Layer x head grid of fitted head scores (SADI delta, ITI probe accuracy), mask
    outlined. `about`: what the steerer was fit for, e.g. "copa, sadi-head (tiny)".

    Returns None for steerers without per-head scores (CAA, SADI on other components) or a
    grid of one head.
    """
    d = Path(steerer_dir)
    meta = json.loads((d / "steerer.json").read_text())
    method = meta["method"]
    sadi_heads = method.startswith("sadi") and meta.get("component") == "head"
    if not (method.startswith("iti") or sadi_heads):
        return None  # read no tensors of a steerer that has no per-head scores
    t = load_file(str(d / "steerer.safetensors"))
    if method.startswith("iti") and "accuracy" in t:
        scores, cmap, label, edge = t["accuracy"], "viridis", "probe accuracy", "red"
        vmin, vmax = float(scores.min()), float(scores.max())
    elif sadi_heads and "delta" in t:
        scores, cmap, edge = t["delta"], "RdBu_r", "black"
        label, vmax = "mean activation difference (pos - neg)", float(np.abs(t["delta"]).max())
        vmin = -vmax
    else:
        return None
    if scores.size < 2:
        return None
    n_layers, n_heads = scores.shape
    width = max(6.0, 0.28 * n_layers + 2.5)
    fig = Figure(figsize=(width, max(3.0, 0.3 * n_heads + 1.8)))
    ax = fig.add_subplot()
    im = ax.imshow(scores.T, aspect="auto", origin="lower", cmap=cmap, vmin=vmin, vmax=vmax)
    for layer, head in np.argwhere(t["mask"]):
        ax.add_patch(Rectangle((layer - 0.5, head - 0.5), 1, 1, fill=False, ec=edge, lw=2))
    ax.set_xticks(range(0, n_layers, 1 if n_layers <= 32 else 4))
    ax.set_yticks(range(0, n_heads, 1 if n_heads <= 16 else 4))
    ax.set(xlabel="layer", ylabel="head")
    n_sel = int(t["mask"].sum())
    about = about or f"{method} ({meta.get('model_id', '')})"
    ax.set_title(f"{about}: {method.upper()} head scores, {n_sel} selected outlined", fontsize=10)
    fig.colorbar(im, ax=ax, label=label, fraction=0.05, pad=0.02)
    caption = (
        f"{about}: {label} of every head, layer by layer; the {n_sel} heads it steers are "
        f"outlined in {edge}."
    )
    return Chart(fit_titles(fig), caption)


def plot_head_heatmap(
    steerer_dir: str | Path, path: str | Path, about: str | None = None
) -> Path | None:
    """`heads_chart` as a PNG at `path`; None where it draws none."""
    chart = heads_chart(steerer_dir, about)
    return None if chart is None else save(chart, path)


def units_chart(steerer_dir: str | Path, about: str | None = None) -> Chart | None:
    """AUSteer: activation momentum beta of every atomic unit [layer x dimension], the k
    selected units marked, and the number selected per layer. None for other steerers."""
    import torch

    from sadi.steerers.austeer import select_units

    d = Path(steerer_dir)
    meta = json.loads((d / "steerer.json").read_text())
    if meta["method"] != "austeer":
        return None
    t = load_file(str(d / "steerer.safetensors"))
    beta, mean_diff = t["beta"], t["mean_diff"]
    if beta.size < 2:
        return None
    variant = meta.get("variant", "momentum")
    layers, dims = select_units(
        torch.from_numpy(beta),
        torch.from_numpy(mean_diff),
        int(meta["k"]),
        variant,
        int(meta.get("seed", 0)),
    )
    n_layers, width = beta.shape
    # constrained: tight_layout cannot place a colorbar shared by two axes
    fig = Figure(figsize=(max(7.0, 0.25 * n_layers + 3), 6.5), layout="constrained")
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
    component = meta.get("component", "")
    top.set(ylabel=f"{component} dimension")
    about = about or f"austeer ({meta.get('model_id', '')})"
    top.set_title(
        f"{about}: AUSteer activation momentum, {len(layers)} units selected (x), "
        f"variant {variant}",
        fontsize=10,
    )
    counts = np.bincount(layers.numpy(), minlength=n_layers)
    bottom.bar(range(n_layers), counts, color="C0")
    bottom.set(xlabel="layer", ylabel="units selected")
    bottom.set_xticks(range(0, n_layers, 1 if n_layers <= 32 else 4))
    fig.colorbar(im, ax=[top, bottom], label="beta", fraction=0.04, pad=0.02)
    caption = (
        f"{about}: activation momentum (beta) of every {component} dimension, layer by "
        f"layer, the {len(layers)} units it steers marked x ({variant}); below, how many "
        "it steers per layer."
    )
    return Chart(fit_titles(fig, tight=False), caption)


def plot_units(steerer_dir: str | Path, path: str | Path, about: str | None = None) -> Path | None:
    """`units_chart` as a PNG at `path`; None where it draws none."""
    chart = units_chart(steerer_dir, about)
    return None if chart is None else save(chart, path)


def plot_deltas(rows: Sequence[Row], out_dir: str | Path) -> list[Path]:
    """Per model: a method x task heatmap of report deltas (`delta_chart`). A model with one
    task gets none (a heatmap of one column says less than the methods plot beside it)."""
    out, paths = Path(out_dir), []
    for model in sorted({r["model"] for r in rows}):
        mine = [r for r in rows if r["model"] == model and r["diff"] is not None]
        if len({r["task"] for r in mine}) < 2:
            continue
        paths.append(save(delta_chart(model, mine), out / f"deltas_{slug(model)}.png"))
    return paths


def delta_chart(model: str, rows: Sequence[Row]) -> Chart:
    """The method x task heatmap of one model's report deltas (steered - unsteered, x100,
    each in its task's metric), a star where the paired test gives p < 0.05; each value in
    white on dark cells and black on light ones."""
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
    ax.set_title(f"{model}: report delta vs unsteered (x100; * paired p < 0.05)", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    caption = (
        f"{model}: report delta (steered - unsteered, x100, in each task's metric) of every "
        f"method on each of {len(tasks)} tasks; blue: steering gains, red: it loses, grey: "
        "not run, * paired p < 0.05."
    )
    return Chart(fit_titles(fig), caption)


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
