"""Reading run and sweep directories into records: which point each sweep chose, and scores."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sadi.infra.jsonio import read_json, read_jsonl
from sadi.pipeline.results import judgements_file, read_results, samples_file
from sadi.steerers.spec import MethodSpec

SELECTION = "selection.json"
SELECTION_FIX = "rerun `python -m sadi.select <sweep dir>` to write it again"
Row = dict[str, Any]  # one table row: strings, Estimates, the p-value
NON_PARAMS = {"_target_", "name", "seed", "batch_size"}


@dataclass
class RunRecord:
    """One run directory, or the chosen point of a sweep (`points` then lists the sweep)."""

    run_dir: Path
    task: str
    intervention: str  # e.g. "sadi", "iti", "caa", "austeer", "none"
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
    # other tasks scored with and without this steerer: {task: {split, n_items, steered,
    # baseline}} (results.json "side_effects")
    side_effects: dict[str, Any] = field(default_factory=dict)
    format: str = "lm_eval"  # the prompt format (task.format)
    data: str = ""  # the data fingerprint the run recorded (results.json inputs.data)
    spec: MethodSpec | None = None  # the steering method's metadata (results.json method)
    # set by `collect` when records of one task name read different data: told apart by it
    data_tag: str = ""
    prompt: str = "none"  # the prompting arm (`prompt.name`): none, instruction, few_shot
    # wall time of the run (results.json timings.total_s); a chosen point: its sweep's points
    # and the report run together
    seconds: float = 0.0
    # results.json `judged` (the judge's identity, rubric hash, per condition and split the
    # judged and judge-free scores); a chosen point: its report run's; {} without a judge
    judged: dict[str, Any] = field(default_factory=dict)

    @property
    def task_label(self) -> str:
        """The task as tables show it: `copa (ab)` for a non-default prompt format (the CAA
        behaviours are A/B items by definition and keep their name), and `[data <digest>]`
        when the report holds other data under the same name."""
        label = self.task
        if self.format != "lm_eval" and not self.task.startswith("caa_"):
            label = f"{self.task} ({self.format})"
        return f"{label} [data {self.data_tag}]" if self.data_tag else label

    @property
    def method(self) -> str:
        """The arm: intervention name + component, e.g. "sadi-head"; "none" when unsteered;
        a prompting arm by its name ("few_shot"), before the steerer it is combined with
        ("few_shot + caa-residual")."""
        steering = f"{self.intervention}-{self.component}" if self.steered else "none"
        if self.prompt == "none":
            return steering
        return f"{self.prompt} + {steering}" if self.steered else self.prompt

    @property
    def axes(self) -> tuple[str, str | None] | None:
        """(strength, line) of the method's strength plots, or None (unsteered, unknown)."""
        return None if self.spec is None else (self.spec.strength, self.spec.line)

    @property
    def steerer_dir(self) -> Path | None:
        d = self.run_dir / "steerer"
        return d if (d / "steerer.safetensors").exists() else None


def load_run(run_dir: str | Path) -> RunRecord:
    """Read `results.json` of one run directory."""
    d = Path(run_dir)
    res = read_results(d / "results.json")
    cfg = res.config
    iv = res.intervention
    prompt = cfg.get("prompt") or {}
    shots = {"shots": prompt.get("k")} if prompt.get("name") == "few_shot" else {}
    return RunRecord(
        run_dir=d,
        task=cfg["task"]["name"],
        intervention=iv.get("name", "none"),
        component=cfg.get("component", {}).get("name", "-"),
        model=cfg.get("model", {}).get("name", "-"),
        metric=cfg["task"].get("primary_metric") or "acc",
        params={**{k: v for k, v in iv.items() if k not in NON_PARAMS}, **shots},
        metrics=res.metrics,
        baseline_metrics=res.baseline_metrics,
        steered=res.steered,
        sample_dirs={"select": d, "report": d},
        side_effects=res.side_effects,
        format=cfg["task"].get("format") or "lm_eval",
        data=str(res.inputs.get("data") or ""),
        spec=res.spec(),
        prompt=str(prompt.get("name") or "none"),
        seconds=float(res.timings.get("total_s") or 0.0),
        judged=res.judged,
    )


def _find(root: Path, path: str) -> Path | None:
    """A path from selection.json: as written, else below its directory (it may have moved)."""
    p = Path(path)
    # selected/<group>/ lies in the sweep directory, beside the points (a relative path
    # written by a select run started elsewhere)
    sweep = root.parents[1] / p.name if len(root.parents) > 1 else p
    return next((c.resolve() for c in (p, root / p, root / p.name, sweep) if c.exists()), None)


def _run_dirs(root: Path) -> list[Path]:
    return sorted(f.parent.resolve() for f in root.rglob("results.json"))


def _from_selection(root: Path) -> RunRecord:
    """The chosen point of `root/selection.json`, with its report metrics and sweep points.

    The points are the listed `candidates` (as `python -m sadi.select` writes them), else the
    run directories below `root` other than the report run.
    """
    sel = read_json(root / SELECTION, SELECTION_FIX)
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
    rec.side_effects = sel.get("side_effects") or (
        load_run(report_dir).side_effects if report_dir is not None else {}
    )
    rec.points = [load_run(d) for d in dirs]
    report = load_run(report_dir) if report_dir is not None else None
    report_seconds = report.seconds if report is not None else 0.0
    rec.judged = report.judged if report is not None else {}
    rec.seconds = sum(p.seconds for p in rec.points) + report_seconds
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
        groups: dict[tuple[str, str, str, str], list[RunRecord]] = {}
        for d in _run_dirs(path):  # run dirs below a selection.json are its report runs
            if d in taken or any(r in d.parents or r == d for r in roots):
                continue
            rec = load_run(d)
            key = (rec.task_label, rec.method, rec.model, rec.data)
            # a sibling of a chosen point in its group: a point its selection did not list
            owner = [r for r in chosen if (r.task_label, r.method, r.model, r.data) == key]
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
    tag_data(records)
    return records


def tag_data(records: Sequence[RunRecord]) -> None:
    """Give records of one task name that read different data a `data_tag` (the first six
    characters of their data fingerprint), so no table or plot merges them."""
    by_label: dict[str, set[str]] = {}
    for rec in records:
        by_label.setdefault(rec.task_label, set()).add(rec.data)
    for rec in records:
        if len(by_label[rec.task_label]) > 1:
            tag = rec.data[:6] or "unrecorded"
            for r in (rec, *rec.points):
                r.data_tag = tag


def samples_path(rec: RunRecord, split: str, baseline: bool = False) -> Path:
    """Where a split's per-item samples file of `rec` lies (it may not exist)."""
    name = samples_file(rec.task, split, baseline and rec.steered)
    return rec.sample_dirs.get(split, rec.run_dir) / name


def load_samples(rec: RunRecord, split: str, baseline: bool = False) -> list[dict[str, Any]] | None:
    """The per-item rows of a split's samples file (id, label, prediction, scores); None if
    absent."""
    f = samples_path(rec, split, baseline)
    if not f.exists():
        return None
    return read_jsonl(f)


def judged_path(rec: RunRecord, split: str, baseline: bool = False) -> Path:
    """Where the judged rows (`sadi.pipeline.judging`) of the run holding `split` lie."""
    name = judgements_file(rec.task, baseline and rec.steered)
    return rec.sample_dirs.get(split, rec.run_dir) / name


def load_judged(rec: RunRecord, split: str, baseline: bool = False) -> dict[str, Any] | None:
    """{id: judged row} of `split` (rows carry `scores`, `perplexity`, ...); None when the
    run judged nothing there."""
    f = judged_path(rec, split, baseline)
    if not f.exists():
        return None
    rows = {str(r["id"]): r for r in read_jsonl(f) if r.get("split") == split}
    return rows or None


def load_scores(rec: RunRecord, split: str, baseline: bool = False) -> dict[str, float] | None:
    """Per-item scores {id: score} of a split from the samples files; None if absent."""
    rows = load_samples(rec, split, baseline)
    return None if rows is None else {str(r["id"]): float(r[rec.metric]) for r in rows}
