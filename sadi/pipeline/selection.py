"""Honest selection: choose hyperparameters on the select split, report the report split once
(the command line is `sadi.select`).

    python -m sadi.select outputs/sweeps/<sweep_name> [--logger none] [--side-effects mmlu]
                          [--across-components] [--set sweep.engine=true]

For each group of sweep points (same task, model, component and method, and the same inputs:
points that read other data or weights, or another prompt format, form groups of their own,
named with a tag of their inputs) the point with the best select-split value of its
`optimized_metric` is chosen. Ties go to the weakest intervention: the smallest
|strength - 1| (SADI), |alpha| (ITI, AUSteer), |multiplier| (CAA) or |lam| (SAS), then
the smallest k, then the override string in alphabetical order. Only the chosen point is
then scored on the report split (its fit comes from the fit cache), in
`<sweep>/selected/<group>/report/`, and `<sweep>/selected/<group>/selection.json` records the
choice, every candidate's select value, and the report metrics. A sweep made with a judge
(`judge=openai`, `task.open_ended=true`) judges the chosen point's report-split generations
there, once (the judgements are cached); `--set judge.base_url=...` points it at the judge's
server where that moved. `--across-components` makes
the component one more hyperparameter (AUSteer's site: one choice over every site swept).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from sadi.infra.cache import digest
from sadi.infra.errors import UserError
from sadi.infra.jsonio import write_json
from sadi.judge.rubrics import judged_score
from sadi.pipeline import runner
from sadi.pipeline.context import RunContext
from sadi.pipeline.results import Results, read_results

SELECTED = "selected"
_ABSENT = object()
# what `overrides` may change in the report run: how it scores, never what it scores
REPORT_OVERRIDES = (
    "sweep.",
    "task.open_ended",
    "task.max_gen_toks",
    "model.batch_size",
    "model.device",
    "model.device_map",
    "model.offload_folder",
    "progress",
    "verbose",
    "logger.",
    # where and how the judge is asked, never which judge or rubric (they change the scores)
    "judge.base_url",
    "judge.api_key_env",
    "judge.max_concurrency",
    "judge.timeout_s",
    "judge.retries",
    "judge.backoff_s",
)


def check_report_override(key: str) -> None:
    """Refuse an override of the report run that would change what was chosen or scored."""
    if not any(key == k or (k.endswith(".") and key.startswith(k)) for k in REPORT_OVERRIDES):
        allowed = ", ".join(k + ("*" if k.endswith(".") else "") for k in REPORT_OVERRIDES)
        raise ValueError(
            f"override {key!r}: the report run scores the chosen point as chosen; only how "
            f"it scores may change: {allowed}"
        )


def _shown(metric: str, value: float | None) -> str:
    """A metric as the console shows it: x100, a judged score on its rubric's scale."""
    if value is None:
        return "- (none: no judge answer had a score)"
    return f"{value:.2f}" if judged_score(metric) else f"{100 * value:.2f}"


def points(sweep_dir: Path) -> list[Path]:
    """Run directories of a sweep (those with results.json), outside `selected/`."""
    found = [
        p.parent
        for p in sweep_dir.rglob("results.json")
        if SELECTED not in p.relative_to(sweep_dir).parts
    ]
    if not found:
        raise FileNotFoundError(
            f"no results.json under {sweep_dir}; pass the directory of a finished sweep "
            "(outputs/sweeps/<sweep_name>)"
        )
    return sorted(found)


def group_of(config: dict[str, Any], across_components: bool = False) -> str:
    """The group a point is chosen in: task, model, component (or `sites` when the
    component is chosen like any other hyperparameter), method and prompting arm (a prompt
    is an arm of its own, never a hyperparameter of the method it is combined with)."""
    component = "sites" if across_components else config["component"]["name"]
    prompt = (config.get("prompt") or {}).get("name") or "none"
    return "_".join(
        str(x)
        for x in (
            config["task"]["name"],
            config["model"]["name"],
            component,
            config["intervention"]["name"],
            *([] if prompt == "none" else [prompt]),
        )
    )


def inputs_of(results: Results) -> str:
    """A short tag of what a point read (data and weights fingerprints, and the paths they
    came from): points that differ in it are compared in separate groups."""
    config = results.config
    key = {
        "inputs": results.inputs or None,
        "source": config["model"].get("source"),
        "path": config["task"].get("path"),
        "format": config["task"].get("format"),
    }
    return "in-" + digest(key)[:8]


def tie_break(results: Results, run_dir: Path) -> tuple[Any, ...]:
    """Smaller is preferred: the weakest intervention (|strength - identity| of the method's
    spec), then its size (e.g. the fewest elements), then the name."""
    spec = results.spec()
    return (*(spec.tie_break(results.intervention) if spec else (0.0, 0.0)), run_dir.name)


def select(
    sweep_dir: Path,
    logger: str | None = None,
    side_effects: list[str] | None = None,
    side_limit: int | None = 500,
    across_components: bool = False,
    overrides: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Choose per group on the select split, then evaluate the report split once per group;
    `side_effects` tasks (e.g. ["mmlu"]) are scored there too, on their report split's first
    `side_limit` items, with and without the chosen steerer (the capability cost).

    `across_components`: the component is one more hyperparameter (AUSteer's site): one
    choice per task, model and method over every component swept. `overrides` (dotted
    config keys, e.g. {"sweep.engine": True}) change how the report run scores, never what
    was chosen."""
    groups: dict[str, list[tuple[Path, Results]]] = {}
    by_name: dict[str, set[str]] = {}
    found = [(p, read_results(p / "results.json")) for p in points(sweep_dir)]
    for _, results in found:
        name = group_of(results.config, across_components)
        by_name.setdefault(name, set()).add(inputs_of(results))
    for point, results in found:
        name = group_of(results.config, across_components)
        if len(by_name[name]) > 1:  # same names, other data or weights: never one group
            name = f"{name}_{inputs_of(results)}"
        groups.setdefault(name, []).append((point, results))
    selections = []
    for group, members in sorted(groups.items()):
        candidates = []
        for point, results in members:
            split, _, metric = results.config["optimized_metric"].partition("/")
            assert split == "select", f"{point}: optimized_metric must read the select split"
            value = results.metrics.get("select", {}).get(metric, math.nan)
            candidates.append((point, results, metric, float(value)))
        valid = [c for c in candidates if not math.isnan(c[3])]
        if not valid:
            metric = candidates[0][2]
            why = (
                "no judge answer on the select split had a score in the rubric's range (see "
                "`judged` in each point's results.json: a stronger judge, or more "
                "judge.max_tokens, may answer in range)"
                if judged_score(metric)
                else "the points hold no value of it"
            )
            raise UserError(
                f"group {group}: no point has a select-split value of {metric} to choose by: {why}"
            )
        best = max(c[3] for c in valid)
        tied = [c for c in valid if c[3] == best]
        point, results, metric, value = min(tied, key=lambda c: tie_break(c[1], c[0]))

        out = sweep_dir / SELECTED / group
        config = OmegaConf.create(results.config)
        config.task.splits = ["report"]
        config.paths.output_dir = str(out / "report")
        if side_effects:
            config.side_effects = {
                "tasks": list(side_effects),
                "split": "report",
                "limit": side_limit,
            }
        if logger is not None:
            config.logger.name = logger
        for key, new in (overrides or {}).items():
            check_report_override(key)
            if OmegaConf.select(config, key, default=_ABSENT) is _ABSENT:
                raise ValueError(
                    f"override {key}={new!r}: the chosen point's config has no {key!r}; "
                    "name an existing key, e.g. sweep.engine or task.open_ended"
                )
            OmegaConf.update(config, key, new)
        runner.run(RunContext.build(config, "select"))
        report = read_results(out / "report" / "results.json")
        selection = {
            "group": group,
            "metric": metric,
            "rule": "max select value; ties: weakest intervention, then smallest k, then name",
            "chosen": {
                "run_dir": str(point),
                "overrides": point.name,
                "params": results.intervention,
                "select": results.metrics["select"],
                "select_baseline": results.baseline_metrics.get("select", {}),
            },
            "candidates": [{"run_dir": str(p), "select": v} for p, _, _, v in candidates],
            "n_points": len(candidates),
            "report": {
                "metrics": report.metrics["report"],
                "baseline_metrics": report.baseline_metrics["report"],
            },
            "report_run_dir": str(out / "report"),
            "side_effects": report.side_effects,
        }
        write_json(out / "selection.json", selection)
        selections.append(selection)
        report_values = [
            selection["report"][k].get(metric) for k in ("metrics", "baseline_metrics")
        ]
        shown = [_shown(metric, v) for v in (value, *report_values)]
        print(
            f"{group}: chose {point.name} (select {metric} {shown[0]} of "
            f"{len(candidates)} points); report {metric} {shown[1]} vs baseline {shown[2]}"
        )
    return selections
