"""The prepared GPU check (`scripts/gpu_check.py`) runs end to end on tiny shapes on the CPU
and writes its JSON: every registered method's fit and steered-forward cost, the 16-point
sweep engine against per-point scoring (their log-likelihoods agreeing), the device."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from sadi.steerers.registry import methods

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # ~1-2 minutes on 2 cores: LoRA and LoReFT train
def test_the_gpu_check_runs_on_tiny_shapes_and_writes_its_json(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--tiny", "--out", str(out)]
    cmd += ["--rounds", "1", "--pairs", "4", "--items", "2", "--tokens", "32", "--batch", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["device"] and result["torch"] and result["gpu"] in (True, False)
    assert set(result["shapes"]) == {"tiny-llama", "tiny-qwen3"}
    for shape in result["shapes"].values():
        assert shape["dtype"] == "bfloat16" and shape["params"] > 0
        assert shape["plain_forward"]["tokens_per_s"] > 0
        assert set(shape["methods"]) == set(methods())
        for got in shape["methods"].values():
            assert got["fit_s"] > 0 and got["steered_over_plain"] > 0
        sweep = shape["sweep"]
        assert sweep["points"] == 16 and sweep["engine_s"] > 0 and sweep["per_point_s"] > 0
        # bf16: the engine's shared prefixes round differently from one full forward; the
        # steered points stay within a few times the unsteered rows' own difference
        own = sweep["baseline_abs_loglikelihood_diff"]
        assert math.isfinite(sweep["max_abs_loglikelihood_diff"])
        assert sweep["max_abs_loglikelihood_diff"] <= 8 * own + 0.05


def test_without_a_gpu_the_full_shapes_say_how_to_run() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the full check would run")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--out", "/dev/null"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "--tiny runs anywhere" in proc.stdout
