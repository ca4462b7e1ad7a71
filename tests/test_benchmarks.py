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
