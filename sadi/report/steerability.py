"""Per-item steerability ("Steerability"): how each item's answer moves with the strength, not
only the average (Tan et al. 2024, arXiv 2407.12404: averages hide items steered the wrong
way).

For a swept method, the points at the chosen point's other hyperparameters (e.g. CAA's chosen
layer) and the unsteered model (the method's identity strength) give, per item, the logit
difference `ll(label) - max ll(other answers)` at every strength; its least-squares slope
over the strength is the item's steerability. Reported: the median slope, the share of
items with a negative slope (steered away from the labelled answer as the strength grows,
with a bootstrap CI), and for the vector methods (CAA, ITI) the fit-time consistency of the
pair differences (mean cosine to their mean difference, Braun et al. 2025) where the chosen
point steers;
the distribution of slopes as a histogram per task.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from sadi.infra.jsonio import read_json
from sadi.report.blocks import Table
from sadi.report.figures import Chart, fit_titles, save, slug
from sadi.report.records import RunRecord, load_samples
from sadi.report.stats import Estimate, bootstrap_ci

TITLE = "Steerability"
NOTE = (
    "Per item, the least-squares slope of the logit difference ll(label) - max ll(other "
    "answers) over the strength, on the split every point scored (select for a sweep), at the "
    "chosen point's other hyperparameters, the unsteered model included at the identity "
    "strength. `wrong way`: the share of items whose slope is negative (x100, 95% bootstrap "
    "CI). `consistency`: at fit time, the mean cosine of each pair's difference to the mean "
    "difference where the chosen point steers (CAA: its layer; ITI: the mean over its heads)."
)
COLUMNS = ["task", "model", "method", "strengths", "items", "median slope", "wrong way"]
COLUMNS += ["consistency"]


def logit_difference(row: dict[str, Any]) -> float:
    """ll(label) - the best other answer's ll, of one samples row."""
    ll, label = row["loglikelihoods"], int(row["label"])
    return float(ll[label] - max(v for i, v in enumerate(ll) if i != label))


def logit_differences(rows: list[dict[str, Any]]) -> dict[str, float]:
    """{item: logit difference} of samples rows, or {} where they keep no log-likelihoods."""
    if not rows or not all("loglikelihoods" in r and "label" in r for r in rows):
        return {}
    return {str(r["id"]): logit_difference(r) for r in rows}


def item_slopes(rec: RunRecord) -> tuple[list[float], dict[str, float]] | None:
    """(the strengths, {item id: slope}) of a swept record, or None where fewer than two
    strengths were scored on one split."""
    spec = rec.spec
    if spec is None or not rec.steered or not rec.points:
        return None
    others = [a for a in spec.axes if a != spec.strength]
    line = [p for p in rec.points if all(p.params.get(a) == rec.params.get(a) for a in others)]
    curves: dict[float, dict[str, float]] = {}
    for split in ("select", "report"):
        curves = {}
        for p in line:
            diffs = logit_differences(load_samples(p, split) or [])
            if not diffs:
                continue
            curves[float(p.params[spec.strength])] = diffs
            if spec.identity not in curves:
                base = logit_differences(load_samples(p, split, True) or [])
                if base:
                    curves[spec.identity] = base
        if len(curves) >= 2:
            break
    if len(curves) < 2:
        return None
    return sorted(curves), slopes_of(curves)


def slopes_of(diffs: dict[float, dict[str, float]]) -> dict[str, float]:
    """{item: least-squares slope of its values over the strengths} of {strength: {item:
    value}} (two strengths or more; the items every strength scored)."""
    xs = sorted(diffs)
    ids = sorted(set.intersection(*(set(c) for c in diffs.values())))
    x = np.array(xs)
    y = np.array([[diffs[s][i] for s in xs] for i in ids])  # [items, strengths]
    xc = x - x.mean()
    slopes = (y - y.mean(axis=1, keepdims=True)) @ xc / float(xc @ xc)
    return dict(zip(ids, slopes.tolist()))


def wrong_way(slopes: dict[str, float], n_resamples: int = 2000, seed: int = 0) -> Estimate:
    """The share of items with a negative slope, with its bootstrap CI."""
    return bootstrap_ci([float(v < 0) for v in slopes.values()], n_resamples, seed=seed)


def consistency(rec: RunRecord) -> float | None:
    """The fit-time consistency where the chosen point steers, from steerer.json: CAA's at
    its layer (one value per layer), ITI's averaged over its selected heads (one value per
    layer and head, and the artifact's head mask)."""
    d = rec.steerer_dir
    if d is None:
        return None
    values = read_json(d / "steerer.json").get("consistency") or []
    if values and isinstance(values[0], list):
        from safetensors.torch import load_file

        mask = load_file(str(d / "steerer.safetensors")).get("mask")
        table = np.array(values, dtype=float)
        if mask is None or tuple(mask.shape) != table.shape or not bool(mask.any()):
            return None
        return float(table[mask.numpy().astype(bool)].mean())
    layer = rec.params.get("layer")
    if not values or not isinstance(layer, int) or not 0 <= layer < len(values):
        return None
    return float(values[layer])


def steerability_table(
    records: Sequence[RunRecord], n_resamples: int = 2000, seed: int = 0
) -> Table | None:
    """One row per swept record with two or more strengths; None when there is none."""
    out = Table(TITLE, list(COLUMNS), note=[NOTE])
    for rec in records:
        got = item_slopes(rec)
        if got is None:
            continue
        xs, slopes = got
        values = np.array(list(slopes.values()))
        wrong = wrong_way(slopes, n_resamples, seed)
        assert wrong.lo is not None and wrong.hi is not None
        c = consistency(rec)
        out.rows.append(
            [
                rec.task_label,
                rec.model,
                rec.method,
                ", ".join(f"{s:g}" for s in xs),
                str(len(values)),
                f"{float(np.median(values)):+.3g}",
                f"{100 * wrong.value:.1f} [{100 * wrong.lo:.1f}, {100 * wrong.hi:.1f}]",
                "-" if c is None else f"{c:.3f}",
            ]
        )
    return out if out.rows else None


def steerability_chart(records: Sequence[RunRecord], task: str) -> Chart | None:
    """Histograms of the per-item slopes of every swept method on `task`, one panel each."""
    found = [(r, got) for r in records if r.task_label == task if (got := item_slopes(r))]
    if not found:
        return None
    fig = Figure(figsize=(4.2 * len(found), 3.6))
    axes = fig.subplots(1, len(found), squeeze=False)[0]
    for ax, (rec, (_, slopes)) in zip(axes, found):
        values = np.array(list(slopes.values()))
        ax.hist(values, bins=30, color="tab:blue", alpha=0.8)
        ax.axvline(0.0, color="black", linestyle="--", linewidth=1)
        ax.set(
            title=f"{rec.method}: {100 * float((values < 0).mean()):.0f}% wrong way",
            xlabel=f"slope per unit of {rec.spec.strength if rec.spec else 'strength'}",
        )
    axes[0].set_ylabel("items")
    fig.suptitle(f"{task} ({found[0][0].model}): per-item steerability")
    caption = (
        f"{task} ({found[0][0].model}): histogram of each item's slope of the logit difference "
        "(labelled answer minus the best other) over the strength, one panel per swept method; "
        "left of the dashed line: items steered the wrong way."
    )
    return Chart(fit_titles(fig), caption)


def plot_steerability(records: Sequence[RunRecord], out_dir: str | Path) -> list[Path]:
    """`steerability_chart` per task as `steerability_<task>.png` in `out_dir`."""
    paths = []
    for task in sorted({r.task_label for r in records}):
        chart = steerability_chart(records, task)
        if chart is not None:
            paths.append(save(chart, Path(out_dir) / f"steerability_{slug(task)}.png"))
    return paths


__all__ = [
    "consistency",
    "item_slopes",
    "logit_difference",
    "logit_differences",
    "slopes_of",
    "wrong_way",
    "plot_steerability",
    "steerability_chart",
    "steerability_table",
]
