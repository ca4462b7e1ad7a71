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
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from sadi.infra.errors import reported
from sadi.report.curve_build import Curve, build_curve, curve_axis
from sadi.report.figures import Chart, alt_text, fit_titles, save, slug
from sadi.report.guard import check_not_lost, curve_keys
from sadi.report.records import RunRecord, load_run, tag_data
from sadi.report.stats import Estimate


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
        lines.append(
            f"| {c.task} | {c.model} | {c.method} | {fixed} | {span} | {_fmt(c.baseline)} | "
            f"{_fmt(c.values[0])} | {_fmt(c.values[-1])} | {_fmt(c.range)} | {mono} | "
            f"{c.spearman:+.2f} | {'-' if c.wrong_way is None else _fmt(c.wrong_way)} | "
            f"{c.n_items} |"
        )
    return "\n".join(lines) + "\n"


def curve_chart(task: str, model: str, group: Sequence[Curve]) -> Chart:
    """The curves of one (task, model): a line per method against its relative strength
    ((s - identity) / the largest |s - identity| of its grid, so every method spans [-1, 1]),
    95% CI bands, the unsteered level dashed; the legend gives each method's real range."""
    fig = Figure(figsize=(8, 5.5 + 0.22 * len(group)))
    ax = fig.add_subplot()
    for i, c in enumerate(sorted(group, key=lambda c: c.method)):
        scale = max(abs(s - c.identity) for s in c.strengths) or 1.0
        x = [(s - c.identity) / scale for s in c.strengths]
        y = [100 * v.value for v in c.values]
        lo = [100 * (v.lo if v.lo is not None else v.value) for v in c.values]
        hi = [100 * (v.hi if v.hi is not None else v.value) for v in c.values]
        span = f"{c.param} {c.strengths[0]:g}..{c.strengths[-1]:g}"
        ax.plot(x, y, marker="o", color=f"C{i}", label=f"{c.label}: {span}")
        ax.fill_between(x, lo, hi, color=f"C{i}", alpha=0.15)
    first = group[0]
    ax.axhline(100 * first.baseline.value, color="gray", ls="--", label="unsteered")
    ax.set(
        xlabel="relative strength (negative: away from the behaviour)",
        ylabel=f"{first.split} {first.metric} (%)",
        ylim=(0, 100),
    )
    ax.set_title(f"{task} ({model}): {first.metric} vs steering strength, 95% CI")
    ax.grid(alpha=0.3)
    # below the axes: the fixed parameters make long labels that would hide the curves
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=1)
    methods = ", ".join(sorted({c.method for c in group}))
    caption = (
        f"{task} ({model}): {first.split} {first.metric} against each method's relative "
        f"strength, one line per curve ({methods}), 95% CI bands; dashed: the unsteered model."
    )
    return Chart(fit_titles(fig), caption)


def plot_curves(curves: Sequence[Curve], out_dir: str | Path) -> list[Path]:
    """One PNG per (task, model) of `curve_chart`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    by_task: dict[tuple[str, str], list[Curve]] = {}
    for c in curves:
        by_task.setdefault((c.task, c.model), []).append(c)
    return [
        save(curve_chart(task, model, group), out / f"curve_{slug(task)}_{slug(model)}.png", 110)
        for (task, model), group in sorted(by_task.items())
    ]


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
                {"strength": s, **est(v)} for s, v in zip(c.strengths, c.values, strict=True)
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
    ap.add_argument("--out", default="report/curves")
    ap.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    ap.add_argument(
        "--replace",
        action="store_true",
        help="overwrite an existing curves.json even where the new one drops curves it holds",
    )
    args = ap.parse_args(argv)
    curves = collect_curves(args.paths, args.metric, args.split, args.seed)
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
    images = plot_curves(curves, out)
    md = curve_table(curves)
    (out / "curves.md").write_text(
        "# Behaviour curves\n\nEach method's metric against its strength, the other "
        "hyperparameters fixed as chosen on select; 95% bootstrap CIs over items (resampled "
        "jointly for the whole curve).\n\n"
        + md
        + "".join(f"\n![{alt_text(p)}]({p.name})\n" for p in images)
    )
    (out / "curves.json").write_text(json.dumps(new, indent=1) + "\n")
    print(md + f"\nwrote curves.md, curves.json and {len(images)} PNGs to {out}", flush=True)
    return 0


if __name__ == "__main__":
    with reported("sadi.report.curves"):
        raise SystemExit(main())
