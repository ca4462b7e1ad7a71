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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from scipy.stats import spearmanr

from sadi.infra.errors import reported
from sadi.infra.jsonio import read_jsonl
from sadi.report.guard import check_not_lost, curve_keys
from sadi.report.plots import slug
from sadi.report.records import RunRecord, load_run, tag_data
from sadi.report.stats import Estimate


@dataclass
class Curve:
    """One method's metric against its strength on one task (report split by default).

    Attributes:
        strengths: ascending, the identity (unsteered) strength included.
        values: the mean metric per strength, with a 95% bootstrap CI over items.
        monotonic: "increasing", "decreasing" (point estimates never go the other way) or
            "no"; "flat" when every point is equal.
        monotonic_share: the share of bootstrap resamples whose curve is monotonic in the
            same direction as the point estimates (0 for "no").
        spearman: rank correlation of strength and per-strength mean.
        range: max - min of the per-strength means, with its bootstrap CI.
        toward: the metric at the largest strength minus the unsteered metric (CI); away:
            the same at the smallest strength (the most negative steering).
    """

    task: str
    model: str
    method: str
    param: str
    identity: float  # the strength at which the method does nothing
    fixed: dict[str, Any]
    metric: str
    split: str
    n_items: int
    strengths: list[float]
    values: list[Estimate]
    baseline: Estimate
    monotonic: str
    monotonic_share: float
    spearman: float
    range: Estimate
    toward: Estimate
    away: Estimate
    run_dirs: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        fixed = ", ".join(f"{k}={v}" for k, v in self.fixed.items())
        return f"{self.method} ({fixed})" if fixed else self.method


def _samples_file(directory: Path, task: str, split: str, baseline: bool) -> Path:
    return directory / f"samples_{task}_{split}{'_baseline' if baseline else ''}.jsonl"


def _samples(directory: Path, task: str, split: str, baseline: bool) -> list[dict[str, Any]]:
    path = _samples_file(directory, task, split, baseline)
    if not path.exists():
        return []
    return read_jsonl(path)


def scored_split(points: Sequence[RunRecord], split: str = "auto") -> str:
    """`split`, or for "auto" the split every point scored: report where they all did, else
    select (a sweep scores select only; `python -m sadi.select` scores report once)."""
    if split != "auto":
        return split
    for candidate in ("report", "select"):
        if all(_samples_file(p.run_dir, p.task, candidate, False).exists() for p in points):
            return candidate
    raise FileNotFoundError(
        f"{points[0].run_dir}: the points of this curve share no scored split (no samples "
        "files for report nor for select); pass the directories of a finished curve sweep"
    )


def _per_item(rows: list[dict[str, Any]], metric: str, where: Path) -> dict[str, float]:
    missing = [r["id"] for r in rows if metric not in r]
    if missing:
        raise KeyError(
            f"{where}: samples have no {metric!r} (e.g. item {missing[0]!r}); choose a metric "
            f"they hold: {sorted(k for k in rows[0] if isinstance(rows[0][k], int | float))}"
        )
    return {str(r["id"]): float(r[metric]) for r in rows}


def _axis(rec: RunRecord) -> tuple[str, float]:
    """The method's strength parameter and the strength at which it is the unsteered model
    (its spec, from results.json)."""
    if rec.spec is None:
        raise ValueError(
            f"{rec.run_dir}: no strength axis is known for intervention {rec.intervention!r}: "
            "its results.json records no method (an unsteered run?)"
        )
    return rec.spec.strength, rec.spec.identity


def _monotonic(means: np.ndarray) -> str:
    steps = np.diff(means)
    if np.all(steps == 0):
        return "flat"
    if np.all(steps >= 0):
        return "increasing"
    if np.all(steps <= 0):
        return "decreasing"
    return "no"


def build_curve(
    points: Sequence[RunRecord],
    metric: str = "p_label",
    split: str = "auto",
    n_resamples: int = 2000,
    seed: int = 0,
) -> Curve:
    """The curve of `points`: runs of one method and fit that differ only in its strength,
    on `split` ("auto": report where every point scored it, else select).

    Raises:
        ValueError: the points differ in anything but the strength, or score other items.
    """
    rec = points[0]
    split = scored_split(points, split)
    param, identity = _axis(rec)
    fixed = {k: v for k, v in rec.params.items() if k != param}
    for p in points[1:]:
        other = {k: v for k, v in p.params.items() if k != param}
        mine = (p.task_label, p.model, p.method, p.data, other)
        if mine != (rec.task_label, rec.model, rec.method, rec.data, fixed):
            raise ValueError(
                f"{p.run_dir} differs from {rec.run_dir} in more than {param}: a curve varies "
                "the strength only"
            )
    scores: dict[float, dict[str, float]] = {}
    for p in points:
        rows = _samples(p.run_dir, p.task, split, baseline=False)
        if not rows:
            raise FileNotFoundError(f"{p.run_dir}: no {split} samples; score the {split} split")
        scores[float(p.params[param])] = _per_item(rows, metric, p.run_dir)
    base_rows = _samples(rec.run_dir, rec.task, split, baseline=True)
    base = _per_item(base_rows, metric, rec.run_dir)
    scores.setdefault(identity, base)
    ids = sorted(base)
    for s, got in scores.items():
        if sorted(got) != ids:
            raise ValueError(f"the points at {param}={s} and the baseline score other items")
    strengths = sorted(scores)
    table = np.array([[scores[s][i] for i in ids] for s in strengths])  # [strengths, items]
    base_x = np.array([base[i] for i in ids])
    means = table.mean(axis=1)
    direction = _monotonic(means)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(ids), size=(n_resamples, len(ids)))
    boot = table[:, picks].mean(axis=2)  # [strengths, resamples]
    boot_base = base_x[picks].mean(axis=1)  # [resamples]

    def ci(values: np.ndarray, point: float) -> Estimate:
        lo, hi = np.quantile(values, [0.025, 0.975])
        return Estimate(float(point), float(lo), float(hi), n=len(ids))

    shares = [_monotonic(boot[:, r]) for r in range(n_resamples)]
    same = {"increasing", "flat"} if direction == "increasing" else {"decreasing", "flat"}
    share = 0.0 if direction in ("no", "flat") else sum(s in same for s in shares) / n_resamples
    flat = len(strengths) < 3 or direction == "flat"  # no ranks to correlate
    rho = math.nan if flat else float(spearmanr(strengths, means).statistic)
    top, low = strengths.index(max(strengths)), strengths.index(min(strengths))
    return Curve(
        task=rec.task_label,
        model=rec.model,
        method=rec.method,
        param=param,
        identity=identity,
        fixed=fixed,
        metric=metric,
        split=split,
        n_items=len(ids),
        strengths=strengths,
        values=[ci(boot[j], float(means[j])) for j in range(len(strengths))],
        baseline=ci(boot_base, float(base_x.mean())),
        monotonic=direction,
        monotonic_share=share,
        spearman=rho,
        range=ci(boot.max(axis=0) - boot.min(axis=0), float(means.max() - means.min())),
        toward=ci(boot[top] - boot_base, float(means[top] - base_x.mean())),
        away=ci(boot[low] - boot_base, float(means[low] - base_x.mean())),
        run_dirs=[str(p.run_dir) for p in points],
    )


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
        param, _ = _axis(rec)
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
        "at max strength | range | monotonic (share of resamples) | Spearman | n |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in sorted(curves, key=lambda c: (c.task, c.model, c.method)):
        fixed = ", ".join(f"{k}={v}" for k, v in c.fixed.items())
        span = f"{c.param} {c.strengths[0]:g}..{c.strengths[-1]:g} ({len(c.strengths)})"
        mono = f"{c.monotonic} ({c.monotonic_share:.2f})"
        lines.append(
            f"| {c.task} | {c.model} | {c.method} | {fixed} | {span} | {_fmt(c.baseline)} | "
            f"{_fmt(c.values[0])} | {_fmt(c.values[-1])} | {_fmt(c.range)} | {mono} | "
            f"{c.spearman:+.2f} | {c.n_items} |"
        )
    return "\n".join(lines) + "\n"


def plot_curves(curves: Sequence[Curve], out_dir: str | Path) -> list[Path]:
    """One PNG per (task, model): a line per method against its relative strength
    ((s - identity) / the largest |s - identity| of its grid, so every method spans [-1, 1]),
    95% CI bands, the unsteered level dashed; the legend gives each method's real range."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    by_task: dict[tuple[str, str], list[Curve]] = {}
    for c in curves:
        by_task.setdefault((c.task, c.model), []).append(c)
    for (task, model), group in sorted(by_task.items()):
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
        base = group[0].baseline
        ax.axhline(100 * base.value, color="gray", ls="--", label="unsteered")
        ax.set(
            xlabel="relative strength (negative: away from the behaviour)",
            ylabel=f"{group[0].split} {group[0].metric} (%)",
            ylim=(0, 100),
        )
        ax.set_title(f"{task} ({model}): {group[0].metric} vs steering strength, 95% CI")
        ax.grid(alpha=0.3)
        # below the axes: the fixed parameters make long labels that would hide the curves
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=1)
        fig.tight_layout()
        path = out / f"curve_{slug(task)}_{slug(model)}.png"
        fig.savefig(path, dpi=110)
        paths.append(path)
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
                {"strength": s, **est(v)} for s, v in zip(c.strengths, c.values, strict=True)
            ],
            "baseline": est(c.baseline),
            "monotonic": c.monotonic,
            "monotonic_share": c.monotonic_share,
            "spearman": None if math.isnan(c.spearman) else c.spearman,
            "range": est(c.range),
            "toward": est(c.toward),
            "away": est(c.away),
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
        + "".join(f"\n![{p.stem}]({p.name})\n" for p in images)
    )
    (out / "curves.json").write_text(json.dumps(new, indent=1) + "\n")
    print(md + f"\nwrote curves.md, curves.json and {len(images)} PNGs to {out}", flush=True)
    return 0


if __name__ == "__main__":
    with reported("sadi.report.curves"):
        raise SystemExit(main())
