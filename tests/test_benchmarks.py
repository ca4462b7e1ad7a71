"""The lm-eval benchmark harness runs end to end on a few items (its figures are not checked
here: timings are never asserted), and its same-vector sides agree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bench_lm_eval


@pytest.mark.slow
def test_lm_eval_benchmark_runs_and_peers_agree(tmp_path: Path) -> None:
    result = bench_lm_eval.run(repeats=1, items=4, out_dir=tmp_path, max_wait_s=0.0)
    written = json.loads((tmp_path / "lm_eval.json").read_text())
    assert written["ratios"] == result["ratios"]
    sides = set(result["times_s"])
    assert {"unsteered", "sadi_online", "sadi_faithful", *bench_lm_eval.SAME_VECTOR} <= sides
    assert all(len(times) == 1 and times[0] > 0 for times in result["times_s"].values())
    assert set(result["ratios"]) == sides - {"unsteered"}
    assert set(result["meets_target"]) == set(bench_lm_eval.TARGETS)
    agreement = result["same_vector_agreement"]
    # our CAA at all positions, steering-vectors' apply and lm-eval's `steered` model
    assert set(agreement["max_abs_loglik_diff"]) == set(bench_lm_eval.SAME_VECTOR[1:])
    assert all(d <= 1e-4 for d in agreement["max_abs_loglik_diff"].values())
    assert len(set(agreement["acc"].values())) == 1


@pytest.mark.slow
def test_sweep_benchmark_runs_and_the_engine_agrees_with_the_per_point_path(
    tmp_path: Path,
) -> None:
    """Both sides on 3 BoolQ and 3 CAA items (a quick 8-pair fit): every side timed once,
    the ratios and the memory record there, the engine's log-likelihoods equal today's."""
    from benchmarks import bench_sweep

    result = bench_sweep.run(
        repeats=1,
        out_dir=tmp_path,
        max_wait_s=0.0,
        tasks=("boolq", "caa_sycophancy"),
        items=3,
        n_pairs=8,
    )
    assert json.loads((tmp_path / "sweep.json").read_text())["cases"] == result["cases"]
    boolq, caa = result["cases"]
    assert boolq["items"] == caa["items"] == 3
    assert set(boolq["times_s"]) == {
        "per_point",
        "unsteered",
        "engine_sweep",
        "engine_baseline",
        "engine_one",
    }
    assert set(boolq["ratios"]) == {"whole", "baseline", "extra_point"}
    assert boolq["memory"]["kv_cache"]["largest_chunk_cache_mb"] > 0
    for case in (boolq, caa):
        agreement = case["agreement_with_per_point"]
        assert max(agreement.values()) < 1e-4


def test_a_sweep_benchmark_over_some_tasks_keeps_the_others_measured_cases(
    tmp_path: Path,
) -> None:
    """`--sweep-tasks copa` adds to sweep.json: the other tasks' full-size cases stay, each
    stamped with when and over how many rounds it was measured; capped runs keep nothing."""
    from benchmarks import bench_sweep

    old = {
        "timestamp": "2026-12-03T13:04:54+00:00",
        "versions": {"torch": "2.13.0+cpu"},
        "machine": {"cpu_count": 2},
        "repeats": 1,
        "cases": [
            {"task": "copa", "items": 300},
            {"task": "boolq", "items": 500},
            {"task": "mmlu", "items": 4},  # a capped run's case: not a full-size figure
        ],
    }
    (tmp_path / "sweep.json").write_text(json.dumps(old))
    kept = bench_sweep.earlier_cases(tmp_path, exclude=("copa",), items=None)
    assert [c["task"] for c in kept] == ["boolq"]
    assert kept[0]["measured"]["timestamp"] == old["timestamp"]
    assert kept[0]["measured"]["rounds"] == 1
    assert bench_sweep.earlier_cases(tmp_path, exclude=("copa",), items=4) == []
    assert bench_sweep.earlier_cases(tmp_path / "none", exclude=(), items=None) == []
