"""One behaviour curve: a method's metric against its strength on one task, with item
bootstrap CIs resampled jointly over the whole curve, its monotonicity and its range (see
`curves` for the command that collects and draws them)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from sadi.judge.judging import score_of
from sadi.judge.rubrics import judged_score
from sadi.report.records import RunRecord, judged_path, load_judged, load_samples, samples_path
from sadi.report.stats import Estimate
from sadi.report.steerability import logit_differences, slopes_of, wrong_way


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
        wrong_way: the share of items whose logit difference (labelled answer minus the
            best other) falls as the strength grows (`sadi.report.steerability`), with its
            bootstrap CI; None where the samples keep no log-likelihoods.
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
    wrong_way: Estimate | None = None
    # per strength, the items without a value (a judged score the judge's answer lacked:
    # the means and their CIs are over the rest)
    missing: list[int] = field(default_factory=list)

    @property
    def label(self) -> str:
        fixed = ", ".join(f"{k}={v}" for k, v in self.fixed.items())
        return f"{self.method} ({fixed})" if fixed else self.method


def scored_split(points: Sequence[RunRecord], split: str = "auto") -> str:
    """`split`, or for "auto" the split every point scored: report where they all did, else
    select (a sweep scores select only; `python -m sadi.select` scores report once)."""
    if split != "auto":
        return split
    for candidate in ("report", "select"):
        if all(samples_path(p, candidate).exists() for p in points):
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


def item_values(
    rec: RunRecord, split: str, metric: str, baseline: bool = False
) -> tuple[dict[str, float], list[dict[str, Any]] | None]:
    """Per item `metric` on `split`, and the sample rows it came from (their
    log-likelihoods give the wrong-way share). A judged score (`judge_<score>`) is read from
    the run's judged generations (no sample rows): NaN for an unparseable answer."""
    name = judged_score(metric)
    if name is None:
        rows = load_samples(rec, split, baseline) or []
        if not rows:
            raise FileNotFoundError(f"{rec.run_dir}: no {split} samples; score the {split} split")
        return _per_item(rows, metric, rec.run_dir), rows
    judged = load_judged(rec, split, baseline)
    if judged is None:
        raise FileNotFoundError(
            f"{judged_path(rec, split, baseline)}: no judged {split} generations; {metric} "
            "reads runs made with task.open_ended=true judge=openai"
        )
    values = {i: score_of(r, name) for i, r in judged.items()}
    return {i: math.nan if v is None else v for i, v in values.items()}, None


def curve_axis(rec: RunRecord) -> tuple[str, float]:
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
    param, identity = curve_axis(rec)
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
    diffs: dict[float, dict[str, float]] = {}
    for p in points:
        values, rows = item_values(p, split, metric)
        scores[float(p.params[param])] = values
        if rows is not None:
            diffs[float(p.params[param])] = logit_differences(rows)
    base, base_rows = item_values(rec, split, metric, baseline=True)
    scores.setdefault(identity, base)
    if base_rows is not None:
        diffs.setdefault(identity, logit_differences(base_rows))
    ids = sorted(base)
    for s, got in scores.items():
        if sorted(got) != ids:
            raise ValueError(f"the points at {param}={s} and the baseline score other items")
    strengths = sorted(scores)
    table = np.array([[scores[s][i] for i in ids] for s in strengths])  # [strengths, items]
    base_x = np.array([base[i] for i in ids])
    with warnings.catch_warnings():  # a resample of only unparseable items: NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.nanmean(table, axis=1)
        rng = np.random.default_rng(seed)
        picks = rng.integers(0, len(ids), size=(n_resamples, len(ids)))
        boot = np.nanmean(table[:, picks], axis=2)  # [strengths, resamples]
        boot_base = np.nanmean(base_x[picks], axis=1)  # [resamples]
        spread = np.nanmax(boot, axis=0) - np.nanmin(boot, axis=0)
        base_mean = float(np.nanmean(base_x))
    direction = _monotonic(means)

    def ci(values: np.ndarray, point: float) -> Estimate:
        lo, hi = np.nanquantile(values, [0.025, 0.975])
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
        baseline=ci(boot_base, base_mean),
        monotonic=direction,
        monotonic_share=share,
        spearman=rho,
        range=ci(spread, float(np.nanmax(means) - np.nanmin(means))),
        toward=ci(boot[top] - boot_base, float(means[top]) - base_mean),
        away=ci(boot[low] - boot_base, float(means[low]) - base_mean),
        run_dirs=[str(p.run_dir) for p in points],
        wrong_way=(
            wrong_way(slopes_of(diffs), n_resamples, seed)
            if len(diffs) == len(strengths) >= 2 and all(diffs.values())
            else None
        ),
        missing=[int(np.isnan(row).sum()) for row in table],
    )
