"""Tables with bootstrap confidence intervals, and plots, over run and sweep directories.

    python -m sadi.report outputs/sweeps/<sweep> outputs/runs/<run> [--out report]

A path is a run directory (with `results.json`, from `python -m sadi.run`) or a directory above
run directories. Each directory below it holding a `selection.json` (from a select stage) is a
sweep: its chosen point is reported with the report metrics and samples named there. Other run
directories are grouped by (task, method, model); of a group of several points the best on the
select split is chosen. The report split never chooses. Writes `report.md`, `report.html`
(self-contained), and PNGs into `--out`; the markdown is also printed.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import html
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global state; PNGs render with Agg
from matplotlib.patches import Rectangle
from numpy.typing import ArrayLike
from safetensors.numpy import load_file

SELECTION = "selection.json"
Row = dict[str, Any]  # one table row: strings, Estimates, the p-value
NON_PARAMS = {"_target_", "name", "seed", "batch_size"}
# x axis and line parameter of the strength plot, per intervention name prefix
AXES = {"sadi": ("strength", "k"), "iti": ("alpha", "k"), "caa": ("multiplier", "layer")}
HEADER = (
    "Hyperparameters were chosen on the **select** split; the **report** split is shown once, "
    "for the chosen point only. Values are the metric x100 with a 95% bootstrap CI over items "
    "({n} resamples, seed {seed}); delta = steered - baseline on the same report items, with a "
    "paired test (exact McNemar for 0/1 scores, paired bootstrap otherwise). 'CI n/a': no "
    "per-item samples, the value +- stderr from results.json."
)


@dataclass
class RunRecord:
    """One run directory, or the chosen point of a sweep (`points` then lists the sweep)."""

    run_dir: Path
    task: str
    intervention: str  # e.g. "sadi", "iti", "caa", "none"
    component: str
    model: str
    metric: str  # the task's primary metric, e.g. "acc" or "mc2"
    params: dict[str, Any]
    metrics: dict[str, dict[str, float]]  # {split: {metric: value, metric_stderr: value}}
    baseline_metrics: dict[str, dict[str, float]]
    steered: bool
    sample_dirs: dict[str, Path] = field(default_factory=dict)  # split -> dir of its samples
    points: list[RunRecord] = field(default_factory=list, repr=False)
    chosen_by: str = "single run"

    @property
    def method(self) -> str:
        """Intervention name + component, e.g. "sadi-head"; "none" when unsteered."""
        return f"{self.intervention}-{self.component}" if self.steered else "none"

    @property
    def steerer_dir(self) -> Path | None:
        d = self.run_dir / "steerer"
        return d if (d / "steerer.safetensors").exists() else None


@dataclass
class Estimate:
    """A value with a CI (from per-item samples) or a stderr (from results.json)."""

    value: float
    lo: float | None = None
    hi: float | None = None
    stderr: float | None = None
    n: int | None = None


@dataclass
class PairedTest:
    diff: Estimate  # mean of a - b with its paired bootstrap CI
    p_value: float
    test: Literal["mcnemar", "bootstrap"]


def load_run(run_dir: str | Path) -> RunRecord:
    """Read `results.json` of one run directory."""
    d = Path(run_dir)
    res = json.loads((d / "results.json").read_text())
    cfg = res["config"]
    iv = cfg.get("intervention", {})
    return RunRecord(
        run_dir=d,
        task=cfg["task"]["name"],
        intervention=iv.get("name", "none"),
        component=cfg.get("component", {}).get("name", "-"),
        model=cfg.get("model", {}).get("name", "-"),
        metric=cfg["task"].get("primary_metric") or "acc",
        params={k: v for k, v in iv.items() if k not in NON_PARAMS},
        metrics=res.get("metrics", {}),
        baseline_metrics=res.get("baseline_metrics", {}),
        steered=bool(res.get("steered", iv.get("name", "none") != "none")),
        sample_dirs={"select": d, "report": d},
    )


def _find(root: Path, path: str) -> Path | None:
    """A path from selection.json: as written, else below its directory (it may have moved)."""
    p = Path(path)
    return next((c.resolve() for c in (p, root / p, root / p.name) if c.exists()), None)


def _run_dirs(root: Path) -> list[Path]:
    return sorted(f.parent.resolve() for f in root.rglob("results.json"))


def _from_selection(root: Path) -> RunRecord:
    """The chosen point of `root/selection.json`, with its report metrics and sweep points.

    The points are the listed `candidates` (as `python -m sadi.select` writes them), else the
    run directories below `root` other than the report run.
    """
    sel = json.loads((root / SELECTION).read_text())
    chosen = _find(root, sel["chosen"]["run_dir"])
    if chosen is None:
        raise FileNotFoundError(f"{root / SELECTION}: chosen run_dir not found; re-run the select")
    rec = load_run(chosen)
    report_dir = _find(root, sel["report_run_dir"]) if sel.get("report_run_dir") else None
    listed = [_find(root, c["run_dir"]) for c in sel.get("candidates", [])]
    below = [d for d in _run_dirs(root) if d != report_dir or d == chosen]
    dirs = sorted({chosen, *([d for d in listed if d] or below)})
    rec.metric = sel.get("metric", rec.metric)
    rec.metrics["select"] = {**rec.metrics.get("select", {}), **sel["chosen"].get("select", {})}
    for key in ("metrics", "baseline_metrics"):
        got = sel.get("report", {}).get(key)
        if got is None and report_dir is not None:
            got = getattr(load_run(report_dir), key).get("report")
        if got:
            getattr(rec, key)["report"] = got.get("report", got)  # flat or {split: {...}}
    rec.sample_dirs["report"] = report_dir or rec.run_dir
    rec.points = [load_run(d) for d in dirs]
    rec.chosen_by = f"{SELECTION} ({sel.get('n_points', len(dirs))} points)"
    return rec


def _nan_low(v: float | None) -> float:
    return -math.inf if v is None or math.isnan(v) else float(v)


def collect(paths: Sequence[str | Path]) -> list[RunRecord]:
    """Records to report from run or sweep directories (see the module docstring).

    Example:
        >>> records = collect(["outputs/sweeps/2026-01-01_00-00-00", "outputs/runs/base"])
    """
    records: list[RunRecord] = []
    for path in map(Path, paths):
        if (path / "results.json").exists():
            records.append(load_run(path))
            continue
        roots = sorted({f.parent.resolve() for f in path.rglob(SELECTION)})
        chosen = [_from_selection(root) for root in roots]
        records += chosen
        taken = {p.run_dir for r in chosen for p in [r, *r.points]}
        groups: dict[tuple[str, str, str], list[RunRecord]] = {}
        for d in _run_dirs(path):  # run dirs below a selection.json are its report runs
            if d in taken or any(r in d.parents or r == d for r in roots):
                continue
            rec = load_run(d)
            key = (rec.task, rec.method, rec.model)
            # a sibling of a chosen point in its group: a point its selection did not list
            owner = [r for r in chosen if (r.task, r.method, r.model) == key]
            owner = [r for r in owner if r.run_dir.parent == d.parent]
            if owner:
                owner[0].points.append(rec)
            else:
                groups.setdefault(key, []).append(rec)
        for pts in groups.values():
            best = max(pts, key=lambda r: _nan_low(r.metrics.get("select", {}).get(r.metric)))
            if len(pts) > 1:
                best = dataclasses.replace(
                    best, points=pts, chosen_by=f"best select/{best.metric} of {len(pts)} points"
                )
            records.append(best)
        if not roots and not groups:
            raise FileNotFoundError(
                f"no results.json in or below {path}: pass run directories written by "
                "`python -m sadi.run` or sweep directories of `python -m sadi.run -m ...`"
            )
    return records


def load_scores(rec: RunRecord, split: str, baseline: bool = False) -> dict[str, float] | None:
    """Per-item scores {id: score} of a split from the samples files; None if absent."""
    name = f"samples_{rec.task}_{split}{'_baseline' if baseline and rec.steered else ''}.jsonl"
    f = rec.sample_dirs.get(split, rec.run_dir) / name
    if not f.exists():
        return None
    rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return {str(r["id"]): float(r[rec.metric]) for r in rows}


def _boot_means(x: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    chunks = [  # chunked so that large splits do not allocate n_resamples x n at once
        x[rng.integers(0, len(x), size=(min(256, n_resamples - i), len(x)))].mean(axis=1)
        for i in range(0, n_resamples, 256)
    ]
    return np.concatenate(chunks)


def bootstrap_ci(
    scores: ArrayLike, n_resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> Estimate:
    """Mean of per-item scores with a percentile bootstrap CI (items resampled, seeded)."""
    x = np.asarray(scores, dtype=float)
    lo, hi = np.quantile(_boot_means(x, n_resamples, seed), [(1 - level) / 2, (1 + level) / 2])
    return Estimate(float(x.mean()), float(lo), float(hi), n=len(x))


def paired_test(
    a: ArrayLike, b: ArrayLike, n_resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> PairedTest:
    """Paired comparison of scores a and b on the same items (two-sided).

    0/1 scores get an exact McNemar test on the discordant items; others a paired bootstrap
    (resampled differences shifted to mean 0). The difference's CI is a paired bootstrap.
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = x - y
    diff = bootstrap_ci(d, n_resamples, level, seed)
    if np.isin(x, (0.0, 1.0)).all() and np.isin(y, (0.0, 1.0)).all():
        n01, n10 = int(((x == 1) & (y == 0)).sum()), int(((x == 0) & (y == 1)).sum())
        n = n01 + n10
        tail = sum(math.comb(n, i) for i in range(min(n01, n10) + 1))
        return PairedTest(diff, min(1.0, 2 * tail / 2**n) if n else 1.0, "mcnemar")
    boot = _boot_means(d - d.mean(), n_resamples, seed + 1)
    p = (np.sum(np.abs(boot) >= abs(d.mean()) - 1e-12) + 1) / (n_resamples + 1)
    return PairedTest(diff, float(p), "bootstrap")


def _estimate(rec: RunRecord, split: str, baseline: bool, n: int, seed: int) -> Estimate | None:
    """From the samples when present, else the value and stderr in results.json."""
    if scores := load_scores(rec, split, baseline):
        return bootstrap_ci(list(scores.values()), n, seed=seed)
    v = (rec.baseline_metrics if baseline else rec.metrics).get(split, {})
    return (
        Estimate(float(v[rec.metric]), stderr=v.get(f"{rec.metric}_stderr"))
        if rec.metric in v
        else None
    )


def _params(rec: RunRecord) -> str:
    axes = next((v for k, v in AXES.items() if rec.intervention.startswith(k)), None)
    keys = axes[::-1] if axes else rec.params  # e.g. "k=4, strength=5.0"
    return ", ".join(f"{k}={rec.params[k]}" for k in keys if k in rec.params)


def table(records: Sequence[RunRecord], n_resamples: int = 2000, seed: int = 0) -> list[Row]:
    """One row per record: select and report (steered), baseline report, paired delta."""
    rows = []
    for rec in sorted(records, key=lambda r: (r.task, r.model, r.method != "none", r.method)):
        row: dict[str, Any] = {"task": rec.task, "method": rec.method, "params": _params(rec)}
        row |= {"model": rec.model, "metric": rec.metric, "chosen_by": rec.chosen_by}
        row |= {"run_dir": str(rec.run_dir), "diff": None, "p_value": None, "test": None}
        row["select"] = _estimate(rec, "select", False, n_resamples, seed)
        row["report"] = _estimate(rec, "report", False, n_resamples, seed)
        row["baseline"] = _estimate(rec, "report", True, n_resamples, seed)
        steered, base_scores = load_scores(rec, "report"), load_scores(rec, "report", True)
        if rec.steered and steered and base_scores and steered.keys() & base_scores.keys():
            ids = sorted(steered.keys() & base_scores.keys())  # paired on shared items
            a, b = [steered[i] for i in ids], [base_scores[i] for i in ids]
            t = paired_test(a, b, n_resamples, seed=seed)
            row |= {"diff": t.diff, "p_value": t.p_value, "test": t.test}
        rows.append(row)
    return rows


def _fmt(e: Estimate | None, sign: str = "") -> str:
    if e is None:
        return "-"
    v = f"{100 * e.value:{sign}.1f}"
    if e.lo is not None and e.hi is not None:
        return f"{v} [{100 * e.lo:{sign}.1f}, {100 * e.hi:{sign}.1f}]"
    return f"{v} +- {100 * e.stderr:.1f} (CI n/a)" if e.stderr is not None else f"{v} (CI n/a)"


COLUMNS = ["task", "model", "method", "params", "metric", "select (steered)", "report (steered)"]
COLUMNS += ["report (baseline)", "delta report", "p (test)", "n report", "chosen by"]


def _cells(row: Row) -> list[str]:
    p = f"{row['p_value']:.3g} ({row['test']})" if row["p_value"] is not None else "-"
    n = row["report"].n if row["report"] is not None and row["report"].n else "-"
    fixed = [row[k] for k in ("task", "model", "method", "params", "metric")]
    values = [_fmt(row[k]) for k in ("select", "report", "baseline")] + [_fmt(row["diff"], "+")]
    return [*fixed, *values, p, str(n), row["chosen_by"]]


def to_markdown(rows: Sequence[Row], n_resamples: int = 2000, seed: int = 0) -> str:
    """The table as GitHub markdown, headed by how the numbers were chosen and computed."""
    lines = ["# Steering report", "", HEADER.format(n=n_resamples, seed=seed), ""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_html(
    rows: Sequence[Row], images: Sequence[Path] = (), n_resamples: int = 2000, seed: int = 0
) -> str:
    """A self-contained HTML page: the table and the PNGs embedded as data URIs."""
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in _cells(r)) + "</tr>\n" for r in rows
    )
    header = esc(HEADER.format(n=n_resamples, seed=seed)).replace("**", "")
    figs = "".join(
        f'<figure><img src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}"'
        f' alt="{esc(p.name)}"><figcaption>{esc(p.name)}</figcaption></figure>\n'
        for p in images
    )
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:14px}"
        "th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}th{background:#eee}"
        "tr:nth-child(even){background:#f8f8f8}img{max-width:100%}"
    )
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>Steering report</title>"
        f"<style>{style}</style></head><body><h1>Steering report</h1><p>{header}</p>\n"
        f"<table><tr>{head}</tr>\n{body}</table>\n{figs}</body></html>\n"
    )


def _axes(points: Sequence[RunRecord]) -> tuple[str | None, list[str]]:
    """The x parameter and the parameters that tell lines apart, for a method's sweep."""
    varying = [k for k in points[0].params if len({repr(p.params.get(k)) for p in points}) > 1]
    x, line = next(
        (v for k, v in AXES.items() if points[0].intervention.startswith(k)), (None, None)
    )
    numeric = [k for k in varying if all(isinstance(p.params.get(k), int | float) for p in points)]
    if x not in numeric:
        x = max(numeric, key=lambda k: len({p.params[k] for p in points}), default=None)
    lines = [k for k in varying if k != x]
    if line in points[0].params and line not in lines and line != x:
        lines.insert(0, line)
    return x, lines


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
    groups: dict[str, list[RunRecord]] = {}
    for p in points:
        groups.setdefault(", ".join(f"{k}={p.params.get(k)}" for k in lines), []).append(p)
    for label, pts in sorted(groups.items()):
        pts = sorted(pts, key=lambda p: p.params[x])
        ys = [100 * p.metrics.get("select", {}).get(rec.metric, math.nan) for p in pts]
        ax.plot([p.params[x] for p in pts], ys, marker="o", label=label or rec.method)
    base = rec.baseline_metrics.get("select", {}).get(rec.metric)
    if base is not None:
        ax.axhline(100 * base, color="gray", ls="--", label="unsteered baseline")
    if chosen is not None and x in chosen.params:
        y = 100 * chosen.metrics.get("select", {}).get(rec.metric, math.nan)
        ax.plot([chosen.params[x]], [y], "k*", ms=14, label="chosen", zorder=5)
    ax.set(xlabel=f"intervention.{x}", ylabel=f"select {rec.metric} (%)")
    ax.set_title(f"{rec.method} on {rec.task} ({rec.model}): select split vs {x}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
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
        paths.append(_save(fig, out / f"methods_{_slug(task)}_{_slug(model)}.png"))
    return paths


def _save(fig: Figure, path: str | Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return Path(path)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)


def plot_all(records: Sequence[RunRecord], rows: Sequence[Row], out_dir: str | Path) -> list[Path]:
    """Every plot for these records into `out_dir`: strength sweeps, head heatmaps, methods."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for i, rec in enumerate(records):
        stem = f"{_slug(rec.task)}_{_slug(rec.method)}_{i}"
        if rec.points and (p := plot_strength(rec.points, out / f"strength_{stem}.png", rec)):
            paths.append(p)
        if rec.steerer_dir and (p := plot_head_heatmap(rec.steerer_dir, out / f"heads_{stem}.png")):
            paths.append(p)
    return paths + plot_methods(rows, out)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `python -m sadi.report DIR... [--out report] [--resamples 2000] [--seed 0]`."""
    ap = argparse.ArgumentParser(prog="python -m sadi.report", description=__doc__.split("\n")[0])
    ap.add_argument("paths", nargs="+", help="run directories or sweep directories")
    ap.add_argument("--out", default="report", help="output directory (default: ./report)")
    ap.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    ap.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    args = ap.parse_args(argv)
    records = collect(args.paths)
    rows = table(records, args.resamples, args.seed)
    out = Path(args.out)
    images = plot_all(records, rows, out)
    md = to_markdown(rows, args.resamples, args.seed)
    (out / "report.md").write_text(md + "".join(f"\n![{p.stem}]({p.name})\n" for p in images))
    (out / "report.html").write_text(to_html(rows, images, args.resamples, args.seed))
    print(md + f"\nwrote report.md, report.html and {len(images)} PNGs to {out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
