"""A run names its data, and a report never merges different data under one name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sadi.data.tasks import EXAMPLE_DATA, load_task
from sadi.report import collect, pivot_markdown, table
from sadi.run import run
from tests.test_run import compose_run, tiny_overrides


def relabelled(tmp_path: Path) -> Path:
    """The tiny task with every label moved to the next choice: other data, same ids."""
    rows = [json.loads(r) for r in (EXAMPLE_DATA / "tiny_mc.jsonl").read_text().splitlines()]
    out = tmp_path / "other.jsonl"
    out.write_text(
        "".join(
            json.dumps({**r, "label": (r["label"] + 1) % len(r["choices"])}) + "\n" for r in rows
        )
    )
    return out


def run_on(model_dir: Path, out: Path, data: Path, *extra: str) -> dict:
    overrides = [o for o in tiny_overrides(model_dir, out) if not o.startswith("task.path")]
    run(compose_run([*overrides, f"task.path={data}", *extra]))
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("named", [False, True])
def test_two_datasets_are_never_merged_in_a_report(
    tiny_model_dir: Path, tmp_path: Path, named: bool
) -> None:
    data = {"a": EXAMPLE_DATA / "tiny_mc.jsonl", "b": relabelled(tmp_path)}
    results, runs = {}, {}
    for key, path in data.items():
        runs[key] = tmp_path / f"run_{key}"
        name = [f"task.name=xtiny_{key}"] if named else []
        results[key] = run_on(tiny_model_dir, runs[key], path, *name)
    assert results["a"]["inputs"]["data"] != results["b"]["inputs"]["data"]
    if named:  # the name names the samples files too
        assert (runs["a"] / "samples_xtiny_a_report.jsonl").exists()

    rows = table(collect([runs["a"], runs["b"]]), n_resamples=50)
    assert len({r["task"] for r in rows}) == 2  # two columns, never one
    for key, res in results.items():
        want = f"xtiny_{key}" if named else f"jsonl [data {res['inputs']['data'][:6]}]"
        (row,) = [r for r in rows if r["task"] == want]
        # each dataset's unsteered score sits beside its own deltas
        assert row["baseline"].value == pytest.approx(res["baseline_metrics"]["report"]["acc"])
        assert row["report"].value == pytest.approx(res["metrics"]["report"]["acc"])
    pivot = pivot_markdown(rows)
    for res in results.values():
        assert f"{100 * res['baseline_metrics']['report']['acc']:.1f}" in pivot


def test_one_dataset_alone_keeps_its_plain_name(tiny_model_dir: Path, tmp_path: Path) -> None:
    run_on(tiny_model_dir, tmp_path / "r", EXAMPLE_DATA / "tiny_mc.jsonl")
    (row,) = table(collect([tmp_path / "r"]), n_resamples=50)
    assert row["task"] == "jsonl"


def test_data_names_are_checked() -> None:
    path = EXAMPLE_DATA / "tiny_mc.jsonl"
    assert load_task("xcopa_it", path=path).name == "xcopa_it"
    with pytest.raises(ValueError, match=r"task.name='copa' is a registered task.*copa_mine"):
        load_task("copa", path=path)
    with pytest.raises(ValueError, match="letters, digits"):
        load_task("my data/it", path=path)
    with pytest.raises(ValueError, match="task=jsonl task.path=FILE"):
        load_task("xcopa_it")


def test_a_file_too_small_to_carve_says_so(tmp_path: Path) -> None:
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"id": "a", "question": "Q", "choices": ["x", "y"], "label": 0}))
    with pytest.raises(ValueError, match=r"one.jsonl holds 1 record.*at least 3 records"):
        load_task("jsonl", path=one)
