"""Behaviour curves: a metric against each method's steering strength, with item-bootstrap CIs,
whether the curve is monotonic, and its range.

    python -m sadi.report.curves outputs/sweeps/<curve sweep>... [--metric p_label]
                                 [--split auto|report|select] [--out report/curves]

A curve sweep scores one split at several strengths of one fitted steerer, every other
hyperparameter fixed (e.g. CAA's multiplier -4..4 at the layer chosen on select). Its points
are grouped by (task, model, method, the fixed parameters); the strength axis is the
method's own and the unsteered model is the curve's point at the method's identity strength
(both from the method's spec, which results.json records: SADI's strength 1, CAA's
multiplier 0, ...), read from the points' baseline samples. The
bootstrap resamples items jointly for the whole curve (every strength and the baseline
score the same items), so the range's CI and the share of resamples in which the curve
stays monotonic account for the pairing.

`--metric judge_behaviour` (or another judged score, `judge_<score>`) draws the curves of
the judged open-ended generations (runs made with `task.open_ended=true judge=openai`), on
the rubric's own scale; an item whose judge answer had no score is left out of that
strength's mean and counted (`missing`).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from sadi.infra.errors import reported
from sadi.judge.rubrics import RANGES, judged_score
from sadi.report.curve_build import Curve, build_curve, curve_axis, item_values, scored_split
from sadi.report.figures import Chart, alt_text, fit_titles, save, slug
from sadi.report.guard import check_not_lost, curve_keys
from sadi.report.records import RunRecord, load_run, tag_data
from sadi.report.stats import Estimate, bootstrap_ci


@dataclass
class Level:
    """An arm without a strength axis (a prompting arm: the unsteered model under an
    instruction or shots), drawn across its task's curves as a level with its CI."""

    task: str
    model: str
    arm: str
    metric: str
    split: str
    value: Estimate
    missing: int  # items without a value (unparseable judge answers)
    run_dir: str


def collect_levels(
    paths: Sequence[str | Path], metric: str = "p_label", split: str = "auto", seed: int = 0
) -> list[Level]:
    """The unsteered runs at or below `paths` (e.g. `prompt=instruction intervention=none`)
    as levels: per item `metric` on `split`, its mean with a bootstrap CI."""
    out = []
    for path in map(Path, paths):
        dirs = sorted(f.parent for f in path.rglob("results.json") if "selected" not in f.parts)
        if not dirs:
            raise FileNotFoundError(f"no results.json below {path}: pass unsteered run directories")
        for rec in map(load_run, dirs):
            if rec.steered:
                raise ValueError(
                    f"{rec.run_dir} is steered: --levels takes runs without a steerer (a "
                    "prompting arm); pass steered sweeps as curves"
                )
            sp = scored_split([rec], split)
            values, _ = item_values(rec, sp, metric)
            x = np.array(list(values.values()), dtype=float)
            parsed = x[~np.isnan(x)]
            if not len(parsed):
                raise ValueError(f"{rec.run_dir}: no item has a {metric} value on {sp}")
            out.append(
                Level(
                    task=rec.task_label,
                    model=rec.model,
                    arm=rec.method,
                    metric=metric,
                    split=sp,
                    value=bootstrap_ci(parsed, seed=seed),
                    missing=int(np.isnan(x).sum()),
                    run_dir=str(rec.run_dir),
                )
            )
    return out


def level_table(levels: Sequence[Level]) -> str:
    """Markdown: per arm without a strength, its value with the CI."""
    lines = [
        "| task | model | arm (no strength axis) | metric | split | value | n (unparseable) |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in sorted(levels, key=lambda v: (v.task, v.model, v.arm)):
        k = metric_scale(v.metric)[0]
        lines.append(
            f"| {v.task} | {v.model} | {v.arm} | {v.metric} | {v.split} | {_fmt(v.value, k)} | "
            f"{v.value.n} ({v.missing}) |"
        )
    return "\n".join(lines) + "\n"


def collect_curves(
    paths: Sequence[str | Path], metric: str = "p_label", split: str = "auto", seed: int = 0
) -> list[Curve]:
    """Every curve below `paths` (run directories grouped by task and its data, model,
    method and the parameters other than the strength), on `split` (see `build_curve`)."""
    groups: dict[str, list[RunRecord]] = {}
    loaded: list[RunRecord] = []
    for path in map(Path, paths):
        dirs = sorted(f.parent for f in path.rglob("results.json") if "selected" not in f.parts)
        if not dirs:
            raise FileNotFoundError(f"no results.json below {path}: pass curve sweep directories")
        loaded += [rec for rec in map(load_run, dirs) if rec.steered]
    tag_data(loaded)
    for rec in loaded:
        param, _ = curve_axis(rec)
        fixed = {k: v for k, v in rec.params.items() if k != param}
        key = [rec.task_label, rec.data, rec.model, rec.method, fixed]
        groups.setdefault(json.dumps(key, sort_keys=True, default=str), []).append(rec)
    return [build_curve(points, metric, split, seed=seed) for points in groups.values()]


def metric_scale(metric: str) -> tuple[float, tuple[float, float], str]:
    """(factor, axis range, unit) a curve's metric is shown in: a probability or accuracy
    x100 in %, a judged score (`judge_<score>`) on its rubric's own range."""
    name = judged_score(metric)
    if name is None:
        return 100.0, (0.0, 100.0), " (%)"
    low, high = RANGES[name]
    return 1.0, (float(low), float(high)), f" ({low}-{high})"


def _fmt(e: Estimate, scale: float = 100.0) -> str:
    lo, hi = scale * (e.lo if e.lo is not None else e.value), scale * (e.hi or e.value)
    return f"{scale * e.value:.1f} [{lo:.1f}, {hi:.1f}]"


def curve_table(curves: Sequence[Curve]) -> str:
    """Markdown: per curve its strengths, unsteered value, ends, range and monotonicity."""
    lines = [
        "| task | model | method | fixed | strengths | unsteered | at min strength | "
        "at max strength | range | monotonic (share of resamples) | Spearman | wrong way | n |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in sorted(curves, key=lambda c: (c.task, c.model, c.method)):
        fixed = ", ".join(f"{k}={v}" for k, v in c.fixed.items())
        span = f"{c.param} {c.strengths[0]:g}..{c.strengths[-1]:g} ({len(c.strengths)})"
        mono = f"{c.monotonic} ({c.monotonic_share:.2f})"
        k = metric_scale(c.metric)[0]
        n = f"{c.n_items}" + (f" ({sum(c.missing)} unparseable)" if sum(c.missing) else "")
        lines.append(
            f"| {c.task} | {c.model} | {c.method} | {fixed} | {span} | {_fmt(c.baseline, k)} | "
            f"{_fmt(c.values[0], k)} | {_fmt(c.values[-1], k)} | {_fmt(c.range, k)} | {mono} | "
            f"{c.spearman:+.2f} | {'-' if c.wrong_way is None else _fmt(c.wrong_way)} | {n} |"
        )
    return "\n".join(lines) + "\n"


def curve_chart(
    task: str, model: str, group: Sequence[Curve], levels: Sequence[Level] = ()
) -> Chart:
    """The curves of one (task, model): a line per method against its relative strength
    ((s - identity) / the largest |s - identity| of its grid, so every method spans [-1, 1]),
    95% CI bands, the unsteered level dashed; the legend gives each method's real range."""
    fig = Figure(figsize=(8, 5.5 + 0.22 * len(group)))
    ax = fig.add_subplot()
    k, ylim, unit = metric_scale(group[0].metric)
    for i, c in enumerate(sorted(group, key=lambda c: c.method)):
        scale = max(abs(s - c.identity) for s in c.strengths) or 1.0
        x = [(s - c.identity) / scale for s in c.strengths]
        y = [k * v.value for v in c.values]
        lo = [k * (v.lo if v.lo is not None else v.value) for v in c.values]
        hi = [k * (v.hi if v.hi is not None else v.value) for v in c.values]
        span = f"{c.param} {c.strengths[0]:g}..{c.strengths[-1]:g}"
        ax.plot(x, y, marker="o", color=f"C{i}", label=f"{c.label}: {span}")
        ax.fill_between(x, lo, hi, color=f"C{i}", alpha=0.15)
    first = group[0]
    ax.axhline(k * first.baseline.value, color="gray", ls="--", label="unsteered")
    for j, v in enumerate(sorted(levels, key=lambda v: v.arm), start=len(group)):
        band = [k * (e if e is not None else v.value.value) for e in (v.value.lo, v.value.hi)]
        ax.axhline(k * v.value.value, color=f"C{j}", ls=":", label=f"{v.arm} (no strength)")
        ax.axhspan(band[0], band[1], color=f"C{j}", alpha=0.08)
    ax.set(
        xlabel="relative strength (negative: away from the behaviour)",
        ylabel=f"{first.split} {first.metric}{unit}",
        ylim=ylim,
    )
    ax.set_title(f"{task} ({model}): {first.metric} vs steering strength, 95% CI")
    ax.grid(alpha=0.3)
    # below the axes: the fixed parameters make long labels that would hide the curves
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=1)
    methods = ", ".join(sorted({c.method for c in group}))
    caption = (
        f"{task} ({model}): {first.split} {first.metric} against each method's relative "
        f"strength, one line per curve ({methods}), 95% CI bands; dashed: the unsteered model"
        + (
            f"; dotted: {', '.join(sorted(v.arm for v in levels))} (arms without a strength, "
            "their CI shaded)."
            if levels
            else "."
        )
    )
    return Chart(fit_titles(fig), caption)


def plot_curves(
    curves: Sequence[Curve], out_dir: str | Path, levels: Sequence[Level] = ()
) -> list[Path]:
    """One PNG per (task, model) of `curve_chart` (with that task's `levels`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    by_task: dict[tuple[str, str], list[Curve]] = {}
    for c in curves:
        by_task.setdefault((c.task, c.model), []).append(c)
    paths = []
    for (task, model), group in sorted(by_task.items()):
        judged = judged_score(group[0].metric) is not None  # beside the A/B curves' PNGs
        name = f"curve_{slug(task)}_{slug(model)}{'_' + group[0].metric if judged else ''}"
        mine = [v for v in levels if (v.task, v.model) == (task, model)]
        paths.append(save(curve_chart(task, model, group, mine), out / f"{name}.png", 110))
    return paths


def curves_json(curves: Sequence[Curve]) -> list[dict[str, Any]]:
    """The curves as plain data (results files)."""

    def est(e: Estimate) -> dict[str, float | None]:
        return {"value": e.value, "lo": e.lo, "hi": e.hi}

    return [
        {
            "task": c.task,
            "model": c.model,
            "method": c.method,
            "param": c.param,
            "identity": c.identity,
            "fixed": c.fixed,
            "metric": c.metric,
            "split": c.split,
            "n_items": c.n_items,
            "points": [
                {"strength": s, **est(v), **({"missing": m} if c.missing else {})}
                for s, v, m in zip(
                    c.strengths, c.values, c.missing or [0] * len(c.values), strict=True
                )
            ],
            "baseline": est(c.baseline),
            "monotonic": c.monotonic,
            "monotonic_share": c.monotonic_share,
            "spearman": None if math.isnan(c.spearman) else c.spearman,
            "range": est(c.range),
            "toward": est(c.toward),
            "away": est(c.away),
            "wrong_way": None if c.wrong_way is None else est(c.wrong_way),
            "run_dirs": c.run_dirs,
        }
        for c in curves
    ]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sadi.report.curves", description=__doc__)
    ap.add_argument("paths", nargs="+", help="curve sweep directories")
    ap.add_argument("--metric", default="p_label", help="per-item metric (default p_label)")
    ap.add_argument(
        "--split",
        default="auto",
        choices=["auto", "report", "select"],
        help="the split the curves scored; auto (default): report where every point of a "
        "curve scored it, else select (a sweep scores select only)",
    )
    ap.add_argument(
        "--levels",
        nargs="*",
        default=[],
        metavar="RUN_DIR",
        help="unsteered runs drawn as levels across their task's curves (a prompting arm: "
        "prompt=instruction intervention=none)",
    )
    ap.add_argument("--out", default="report/curves")
    ap.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    ap.add_argument(
        "--replace",
        action="store_true",
        help="overwrite an existing curves.json even where the new one drops curves it holds",
    )
    args = ap.parse_args(argv)
    curves = collect_curves(args.paths, args.metric, args.split, args.seed)
    levels = collect_levels(args.levels, args.metric, args.split, args.seed)
    on_select = sorted({c.task for c in curves if c.split == "select"})
    if on_select and args.split == "auto":
        print(
            f"note: curves of {', '.join(on_select)} are on the select split, the one their "
            "sweeps scored (score report with task.splits=[report], or see --split)"
        )
    out = Path(args.out)
    new = curves_json(curves)
    if (out / "curves.json").exists():
        old = curve_keys(json.loads((out / "curves.json").read_text()))
        check_not_lost(out / "curves.json", old, curve_keys(new), args.replace)
    images = plot_curves(curves, out, levels)
    md = curve_table(curves) + (f"\n{level_table(levels)}" if levels else "")
    (out / "curves.md").write_text(
        "# Behaviour curves\n\nEach method's metric against its strength, the other "
        "hyperparameters fixed as chosen on select; 95% bootstrap CIs over items (resampled "
        "jointly for the whole curve).\n\n"
        + md
        + "".join(f"\n![{alt_text(p)}]({p.name})\n" for p in images)
    )
    (out / "curves.json").write_text(json.dumps(new, indent=1) + "\n")
    if levels:
        (out / "levels.json").write_text(
            json.dumps([{**asdict(v), "value": asdict(v.value)} for v in levels], indent=1) + "\n"
        )
    print(md + f"\nwrote curves.md, curves.json and {len(images)} PNGs to {out}", flush=True)
    return 0


if __name__ == "__main__":
    with reported("sadi.report.curves"):
        raise SystemExit(main())
