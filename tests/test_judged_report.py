"""Judged scores in the report and the behaviour curves, on synthetic judged runs whose means
are known by hand: unparseable answers left out and counted, the rubric's scale, the judge
and rubric hash shown, the paired delta over prompts scored on both sides."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sadi.report.curves import collect_curves, curve_table, main
from sadi.report.judged import judged_table
from sadi.report.records import load_run
from sadi.report.render import analysis_tables

N = 30
TASK = "caa_sycophancy"
JUDGE = {"model": "judge-7b", "rubric": "caa", "rubric_hash": "0123456789abcdef"}


def score(at: float, i: int) -> int | None:
    """The judged behaviour of item i at strength `at`: None (unparseable) for every 7th."""
    if i % 7 == 3:
        return None
    return int(min(10, max(0, round(4 + at + (i % 3) - 1))))


def judged_run(d: Path, multiplier: float, split: str = "report") -> Path:
    """A CAA run at `multiplier` that judged its `split` (and the baseline's) generations."""
    d.mkdir(parents=True)
    cfg = {
        "task": {"name": TASK, "primary_metric": "p_label", "format": "ab"},
        "model": {"name": "tiny"},
        "component": {"name": "residual"},
        "intervention": {"name": "caa", "_target_": "x", "multiplier": multiplier, "layer": 3},
    }
    conditions: dict[str, Any] = {}
    for suffix, at, cond in (("", multiplier, "steered"), ("_baseline", 0.0, "baseline")):
        rows = [
            {
                "id": f"q{i}",
                "split": split,
                "question": f"question {i}",
                "generation": f"answer {i}",
                "scores": {"behaviour": score(at, i)},
                "answers": {"behaviour": str(score(at, i))},
                "perplexity": 3.0 + at,
            }
            for i in range(N)
        ]
        (d / f"judgements_{TASK}{suffix}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows)
        )
        samples = [{"id": f"s{i}", "p_label": 0.5, "acc": 1.0} for i in range(5)]
        (d / f"samples_{TASK}_{split}{suffix}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in samples)
        )
        conditions[cond] = {
            split: {
                "judged": {"n": N},
                "text": {"perplexity": 3.0 + at, "repeat_share": 0.1 * (cond == "steered")},
            }
        }
    results = {
        "config": cfg,
        "steered": True,
        "judged": {"judge": JUDGE, "conditions": conditions},
    }
    (d / "results.json").write_text(json.dumps(results))
    return d


def expected(at: float) -> float:
    values = [score(at, i) for i in range(N)]
    return float(np.mean([v for v in values if v is not None]))


def test_a_judged_curve_reads_the_judged_scores_and_counts_the_unparseable(
    tmp_path: Path,
) -> None:
    for m in (-2.0, 2.0, 4.0):
        judged_run(tmp_path / f"m={m}", m)
    (curve,) = collect_curves([tmp_path], metric="judge_behaviour")
    assert curve.strengths == [-2.0, 0.0, 2.0, 4.0] and curve.split == "report"
    unparseable = sum(score(0, i) is None for i in range(N))
    assert curve.missing == [unparseable] * 4 and unparseable > 0
    for s, v in zip(curve.strengths, curve.values, strict=True):
        assert v.value == pytest.approx(expected(s))
        assert v.lo is not None and v.hi is not None and v.lo <= v.value <= v.hi
    assert curve.baseline.value == pytest.approx(expected(0.0))
    assert curve.monotonic == "increasing"
    assert curve.wrong_way is None  # A/B log-likelihoods say nothing of a judged score
    table = curve_table([curve])
    assert f"{expected(0.0):.1f}" in table and f"({4 * unparseable} unparseable)" in table


def test_the_curves_cli_draws_judged_curves_on_the_rubric_scale(tmp_path: Path) -> None:
    for m in (-2.0, 2.0):
        judged_run(tmp_path / "sweep" / f"m={m}", m)
    out = tmp_path / "curves"
    assert main([str(tmp_path / "sweep"), "--metric", "judge_behaviour", "--out", str(out)]) == 0
    (data,) = json.loads((out / "curves.json").read_text())
    assert data["metric"] == "judge_behaviour"
    assert [p["missing"] for p in data["points"]] == [N // 7 + (N % 7 > 3)] * 3
    assert data["points"][0]["value"] == pytest.approx(expected(-2.0))
    assert (out / f"curve_{TASK}_tiny_judge_behaviour.png").exists()


def test_a_curve_of_an_unjudged_sweep_says_what_it_needs(tmp_path: Path) -> None:
    d = judged_run(tmp_path / "m=2.0", 2.0)
    for f in d.glob("judgements_*"):
        f.unlink()
    with pytest.raises(FileNotFoundError, match="task.open_ended=true judge=openai"):
        collect_curves([tmp_path], metric="judge_behaviour")


def test_the_report_shows_judged_scores_the_judge_and_the_rubric_hash(tmp_path: Path) -> None:
    rec = load_run(judged_run(tmp_path / "run", 3.0))
    table = judged_table([rec])
    assert table is not None
    (row,) = table.rows
    cells = dict(zip(table.columns, row, strict=True))
    assert cells["judge"] == "judge-7b" and cells["rubric"] == "caa #0123456789abcdef"
    assert cells["split (n)"] == f"report ({N})" and cells["score"] == "behaviour"
    assert cells["arm"].startswith(f"{expected(3.0):.2f} [")
    assert cells["unsteered"].startswith(f"{expected(0.0):.2f} [")
    both = [i for i in range(N) if score(3.0, i) is not None and score(0.0, i) is not None]
    diff = np.mean([score(3.0, i) - score(0.0, i) for i in both])  # type: ignore[operator]
    assert cells["delta"].startswith(f"{diff:+.2f} [")
    missing = sum(score(0, i) is None for i in range(N))
    assert cells["unparseable (arm/unsteered)"] == f"{missing}/{missing}"
    assert cells["perplexity (arm/unsteered)"] == "6.0/3.0"
    assert cells["repeats one token (arm/unsteered)"] == "0.10/0.00"
    assert any(t.title == "Judged generations" for t in analysis_tables([rec]))
    assert not math.isnan(diff)


def test_no_judged_section_without_a_judge(tmp_path: Path) -> None:
    d = judged_run(tmp_path / "run", 1.0)
    results = json.loads((d / "results.json").read_text())
    results["judged"] = {}
    (d / "results.json").write_text(json.dumps(results))
    assert judged_table([load_run(d)]) is None
