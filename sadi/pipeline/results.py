"""`results.json`, the record of one run, as a typed and versioned object (torch-free).

Written by the runner, read by resume (is this point complete?), selection, the report and
behaviour curves. Version 1 is the unversioned file sadi wrote before this module; its
missing fields get their defaults, and its method's metadata is looked up in the registry.

Fields:
    version: the format's version (`RESULTS_VERSION`).
    config: the resolved run config (what `python -m sadi.run` composed).
    metrics / baseline_metrics: `{split: {metric: value, metric_stderr: value}}`, steered
        (the unsteered values again for intervention=none) and unsteered.
    steered: whether a steerer was applied.
    method: the steering method's `MethodSpec` as data (None when unsteered).
    scored_splits, split_sizes, splits_file: what was scored, from which items.
    n_pairs: the contrastive pairs the fit used.
    inputs: content fingerprints of the data and the weights (`sadi.pipeline.inputs`).
    timings: seconds per stage; steerer: the saved steerer's directory.
    side_effects: other tasks scored with and without the steerer.
    sweep_engine: whether the shared-prefix engine scored it, and how.
    tracking: the tracker's status (a failure never loses this file).

Beside it lie the run's per-item files, named here once for their writers and readers:
`samples_file`, `generations_file`, `judgements_file`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from sadi.infra.jsonio import DamagedFileError, read_json, write_json
from sadi.steerers.spec import MethodSpec

RESULTS_VERSION = 2
RESULTS_FILE = "results.json"
RESULTS_FIX = (
    "it was cut short (a crash or a full disk mid-write) or edited: rerun the command that "
    "wrote it (a sweep command recomputes only this point and keeps the damaged file aside), "
    "or delete its run directory"
)
Metrics = dict[str, float]


@dataclass
class Results:
    """One run's results.json (see the module docstring)."""

    config: dict[str, Any]
    metrics: dict[str, Metrics] = field(default_factory=dict)
    baseline_metrics: dict[str, Metrics] = field(default_factory=dict)
    steered: bool = False
    method: dict[str, Any] | None = None
    scored_splits: list[str] = field(default_factory=list)
    n_pairs: int = 0
    inputs: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    steerer: str | None = None
    splits_file: str | None = None
    split_sizes: dict[str, int] = field(default_factory=dict)
    side_effects: dict[str, Any] = field(default_factory=dict)
    sweep_engine: dict[str, Any] = field(default_factory=dict)
    # the judge of open-ended generations: its identity, rubric set and hash, per condition
    # and split the judged and judge-free scores (`sadi.judge`); {} without a judge
    judged: dict[str, Any] = field(default_factory=dict)
    tracking: dict[str, Any] | None = None
    version: int = RESULTS_VERSION

    @property
    def intervention(self) -> dict[str, Any]:
        return dict(self.config.get("intervention") or {})

    def spec(self) -> MethodSpec | None:
        """The steering method's metadata: as recorded, else (a version-1 file) from the
        registry by the config's `_target_` (which imports the steerers)."""
        if not self.steered:
            return None
        if self.method is not None:
            return MethodSpec.from_dict(self.method)
        return legacy_spec(self.intervention)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        return {"version": out.pop("version"), **out}

    @classmethod
    def from_json(cls, data: Any, path: Path) -> Results:
        if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
            raise DamagedFileError(path, "not a results.json of sadi (no 'config')", RESULTS_FIX)
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values.setdefault("version", 1)
        if "steered" not in data:
            iv = data["config"].get("intervention") or {}
            values["steered"] = iv.get("name", "none") != "none"
        return cls(**values)


def legacy_spec(intervention: dict[str, Any]) -> MethodSpec | None:
    """The spec of a run recorded before results.json carried it: its `_target_`'s class,
    else the method named by the intervention's name (an ablation's, "sadi_fixed", is its
    method's)."""
    if not intervention.get("_target_"):
        return None
    from sadi.steerers import registry

    cls = registry.by_class_name(str(intervention["_target_"]).rsplit(".", 1)[-1])
    if cls is None:
        name = str(intervention.get("name", ""))
        known = registry.methods()
        cls = known.get(name) or known.get(name.split("_", 1)[0])
    return None if cls is None else cls.spec


def read_results(path: Path) -> Results:
    """A run's results.json; `DamagedFileError` naming it and the fix if it does not parse."""
    return Results.from_json(read_json(path, RESULTS_FIX), path)


def write_results(path: Path, results: Results) -> Path:
    """Write results.json atomically."""
    return write_json(path, results.to_json())


def _unsteered(baseline: bool) -> str:
    return "_baseline" if baseline else ""


def samples_file(task: str, split: str, baseline: bool = False) -> str:
    """`samples_<task>_<split>[_baseline].jsonl`: a split's per-item scores, the unsteered
    model's where `baseline` (a steered run's second condition; an unsteered run has one
    file). A side task's are `samples_file(f"side_{task}", ...)`."""
    return f"samples_{task}_{split}{_unsteered(baseline)}.jsonl"


def generations_file(task: str, baseline: bool = False) -> str:
    """`generations_<task>[_baseline].jsonl`: the greedy answers to the open-ended prompts."""
    return f"generations_{task}{_unsteered(baseline)}.jsonl"


def judgements_file(task: str, baseline: bool = False) -> str:
    """`judgements_<task>[_baseline].jsonl`: the judge's verdicts on those answers."""
    return f"judgements_{task}{_unsteered(baseline)}.jsonl"


__all__ = [
    "RESULTS_FILE",
    "RESULTS_VERSION",
    "Metrics",
    "Results",
    "generations_file",
    "judgements_file",
    "legacy_spec",
    "read_results",
    "samples_file",
    "write_results",
]
