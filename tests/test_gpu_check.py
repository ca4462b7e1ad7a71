"""The prepared GPU check (`scripts/gpu_check.py`) runs end to end on tiny shapes on the CPU
and writes its JSON: every registered method's fit and steered-forward cost, the 16-point
sweep engine against per-point scoring (their log-likelihoods agreeing), the device. It runs
as on a GPU machine: with only the distributions of that machine's image
(`scripts/gpu_image.txt`) and the wheels `scripts/gpu_wheels.sh` carries there importable."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sadi.steerers.registry import methods

ROOT = Path(__file__).resolve().parents[1]


# Runs a script with every installed distribution outside ALLOWED hidden from `import`, as
# on a machine that lacks them (argv: allowed names joined by ",", the script, its arguments).
AS_ON_THE_GPU_IMAGE = """
import importlib.abc, importlib.machinery, importlib.metadata, re, runpy, sys
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
allowed = {norm(n) for n in sys.argv[1].split(",")} | {"sadi"}
owners = importlib.metadata.packages_distributions()
class Hide(importlib.abc.MetaPathFinder):
    # the path finder, blind to modules of distributions outside `allowed`: absent, as
    # there (`import` fails, `importlib.util.find_spec` says None)
    def find_spec(self, name, path=None, target=None):
        dists = owners.get(name.split(".")[0])
        if dists and not any(norm(d) in allowed for d in dists):
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)
    def find_distributions(self, context=importlib.metadata.DistributionFinder.Context()):
        found = importlib.machinery.PathFinder.find_distributions(context)
        return (d for d in found if norm(d.metadata["Name"]) in allowed)
sys.meta_path = [Hide() if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def carried_wheels() -> list[str]:
    """The packages scripts/gpu_wheels.sh fetches (its PACKAGES=(...) line)."""
    text = (ROOT / "scripts" / "gpu_wheels.sh").read_text()
    wheels = re.search(r"^PACKAGES=\((.*)\)$", text, re.M)
    assert wheels, "scripts/gpu_wheels.sh lost its PACKAGES=(...) line"
    return wheels.group(1).split()


def gpu_image() -> set[str]:
    """The GPU image's distributions and the wheels carried there."""
    lines = (ROOT / "scripts" / "gpu_image.txt").read_text().splitlines()
    image = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    return image | set(carried_wheels())


def test_the_hiding_works(tmp_path: Path) -> None:
    """The harness hides what the image lacks (hydra, say) and keeps what it has."""
    code = "import torch, transformers\ntry:\n import hydra\nexcept ImportError: print('hidden')"
    script = tmp_path / "hide_probe.py"
    script.write_text(code)
    allowed = ",".join(sorted(gpu_image()))
    proc = subprocess.run(
        [sys.executable, "-c", AS_ON_THE_GPU_IMAGE, allowed, str(script)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "hidden", proc.stderr[-2000:]


@pytest.mark.slow  # ~1-2 minutes on 2 cores: LoRA and LoReFT train
def test_the_gpu_check_runs_on_tiny_shapes_and_writes_its_json(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    allowed = ",".join(sorted(gpu_image()))
    cmd = [sys.executable, "-c", AS_ON_THE_GPU_IMAGE, allowed]
    cmd += [str(ROOT / "scripts" / "gpu_check.py"), "--tiny", "--out", str(out)]
    cmd += ["--rounds", "1", "--pairs", "4", "--items", "2", "--tokens", "32", "--batch", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    result = json.loads(out.read_text())
    assert result["complete"] is True and not (tmp_path / "gpu.json.tmp").exists()
    assert result["device"] and result["torch"] and result["gpu"] in (True, False)
    assert result["versions"]["transformers"] and result["versions"]["lm_eval"]
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


def test_the_carried_wheels_are_the_versions_ci_tests() -> None:
    """scripts/gpu_wheels.sh takes each wheel at constraints.txt's pin: the GPU figures are
    of the lm-eval and transformers CI tests."""
    pinned = {
        re.sub(r"[-_.]+", "-", line.split("==")[0]).lower()
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line
    }
    for name in carried_wheels():
        assert re.sub(r"[-_.]+", "-", name).lower() in pinned, name


def test_a_spent_budget_skips_parts_and_says_so(tmp_path: Path) -> None:
    """Past --budget-s every part is marked skipped (the plain forward still measured), and
    the JSON is complete: the device call's time limit never loses the file."""
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--tiny", "--out", str(out)]
    cmd += ["--budget-s", "0", "--rounds", "1", "--tokens", "16", "--batch", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["complete"] is True and result["budget_s"] == 0
    for shape in result["shapes"].values():
        assert shape["plain_forward"]["tokens_per_s"] > 0
        assert "skipped" in shape["sweep"]
        assert all("skipped" in got for got in shape["methods"].values())
