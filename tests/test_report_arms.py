"""The baseline comparison in the report, on real tiny sweeps chosen by `sadi.select`: every arm
against the unsteered model and the best prompting arm (paired on the report items), each
arm's budget of select points, and per-item steerability (slopes over the strength, the
share steered the wrong way, CAA's fit-time consistency)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sadi.infra.jsonio import read_jsonl
from sadi.pipeline.selection import select
from sadi.report import main as report_main
from sadi.report.arms import arms_table
from sadi.report.blocks import paired_cell
from sadi.report.records import collect
from sadi.report.steerability import item_slopes, logit_difference, steerability_table
from tests.helpers import run_tiny


def sweep(model_dir: Path, root: Path, name: str, points: list[list[str]]) -> Path:
    """The points as a sweep directory (select split only), then `sadi.select` on it."""
    for i, extra in enumerate(points):
        run_tiny(model_dir, root / name / f"p{i}", "task.splits=[select]", *extra)
    select(root / name)
    return root / name


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> list[Path]:
    root = tmp_path_factory.mktemp("arms")
    caa = ["intervention=caa", "intervention.layer=1"]
    return [
        sweep(
            tiny_model_dir,
            root,
            "caa",
            [[*caa, f"intervention.multiplier={m}"] for m in (-4, 2, 4)],
        ),
        sweep(
            tiny_model_dir,
            root,
            "few_shot",
            [["prompt=few_shot", f"prompt.k={k}", "intervention=none"] for k in (1, 2)],
        ),
        sweep(
            tiny_model_dir,
            root,
            "lora",
            [["intervention=lora", "intervention.epochs=1", "intervention.scale=1.0"]],
        ),
    ]


def test_every_arm_is_tested_against_unsteered_and_the_best_prompt(study: list[Path]) -> None:
    records = collect(study)
    table = arms_table(records)
    assert table is not None
    rows = {r[2]: dict(zip(table.columns, r)) for r in table.rows}
    assert set(rows) == {"unsteered", "few_shot (best prompt)", "caa-residual", "lora-head"}
    assert rows["caa-residual"]["points on select"] == "3"
    assert rows["few_shot (best prompt)"]["points on select"] == "2"
    assert rows["lora-head"]["points on select"] == "1"
    # the run time: the sweep's points and the report run, as their results.json recorded
    caa_dir = study[0]
    total = sum(
        json.loads(f.read_text())["timings"]["total_s"] for f in caa_dir.rglob("results.json")
    )
    assert rows["caa-residual"]["run time (s)"] == f"{total:.1f}"
    # the paired delta against the best prompting arm, recomputed from the samples files
    caa = next(r for r in records if r.intervention == "caa")
    few = next(r for r in records if r.prompt == "few_shot")
    a = {
        x["id"]: x["acc"]
        for x in read_jsonl(caa.sample_dirs["report"] / "samples_jsonl_report.jsonl")
    }
    b = {
        x["id"]: x["acc"]
        for x in read_jsonl(few.sample_dirs["report"] / "samples_jsonl_report.jsonl")
    }
    ids = sorted(a)
    assert set(a) == set(b)  # the prompt changes the contexts, never the report items
    expected = paired_cell([a[i] for i in ids], [b[i] for i in ids], scale=100, binary=True)
    assert rows["caa-residual"]["vs best prompt"] == expected
    assert rows["few_shot (best prompt)"]["vs best prompt"] == "-"
    assert rows["few_shot (best prompt)"]["vs unsteered"].endswith(tuple("0123456789"))


def test_steerability_slopes_are_least_squares_over_the_strengths(study: list[Path]) -> None:
    records = collect(study)
    caa = next(r for r in records if r.intervention == "caa")
    got = item_slopes(caa)
    assert got is not None
    xs, slopes = got
    assert xs == [-4.0, 0.0, 2.0, 4.0]  # the unsteered model at CAA's identity, 0
    # one item by hand: the logit differences at each strength from the samples files
    item = sorted(slopes)[0]
    ys = []
    for x in xs:
        at = x if x != 0.0 else -4.0  # the unsteered scores: any point's baseline file
        point = next(p for p in caa.points if float(p.params["multiplier"]) == at)
        name = "samples_jsonl_select" + ("_baseline" if x == 0.0 else "") + ".jsonl"
        row = next(r for r in read_jsonl(point.run_dir / name) if r["id"] == item)
        ys.append(logit_difference(row))
    assert slopes[item] == pytest.approx(float(np.polyfit(xs, ys, 1)[0]), abs=1e-9)
    table = steerability_table(records)
    assert table is not None
    (row,) = [dict(zip(table.columns, r)) for r in table.rows if r[2] == "caa-residual"]
    assert row["strengths"] == "-4, 0, 2, 4" and int(row["items"]) == len(slopes)
    share = 100 * np.mean(np.array(list(slopes.values())) < 0)
    assert row["wrong way"].startswith(f"{share:.1f} [")
    consistency = json.loads((caa.run_dir / "steerer" / "steerer.json").read_text())["consistency"]
    assert row["consistency"] == f"{consistency[1]:.3f}"


def test_the_report_has_both_sections_and_the_histogram(study: list[Path], tmp_path: Path) -> None:
    assert report_main([*map(str, study), "--out", str(tmp_path / "r"), "--plots", "summary"]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "Steering against prompting" in md and "Steerability" in md
    assert (tmp_path / "r" / "steerability_jsonl.png").exists()


def test_itis_consistency_is_the_mean_over_its_selected_heads(tmp_path: Path) -> None:
    from sadi.report.records import RunRecord
    from sadi.report.steerability import consistency
    from sadi.steerers.iti import ITI
    from tests.conftest import PAIRS, byte_tokenizer, make_tiny

    model = make_tiny("llama")
    iti = ITI(k=3, alpha=5.0, progress=False).fit(model, byte_tokenizer(), list(PAIRS))
    iti.save(tmp_path / "steerer")
    rec = RunRecord(tmp_path, "copa", "iti", "head", "tiny", "acc", {"k": 3}, {}, {}, True)
    mask = iti.fitted_state().mask.numpy()
    expected = float(np.array(iti.consistency)[mask].mean())
    assert consistency(rec) == pytest.approx(expected)
