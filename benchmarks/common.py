"""Shared pieces of the benchmarks: interleaved timing, environment record, JSON output.

Every comparison is measured side by side in one process: the sides run interleaved
(one call of each side per round, the order rotating from round to round so no side is
always first), after warm-up rounds that are not recorded. Figures are medians over the
recorded rounds; the raw per-round times are kept in the JSON.
"""

from __future__ import annotations

import datetime as _dt
import gc
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def load_default_model() -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """The embedded SmolLM2-135M-Instruct (CPU, float32), as every benchmark uses it."""
    from sadi.models import load_model

    return load_model(device="cpu")


def interleaved(
    sides: Mapping[str, Callable[[], object]], repeats: int, warmup: int
) -> dict[str, list[float]]:
    """Time each side once per round, rounds interleaved; returns raw seconds per side.

    Round r runs the sides in the order rotated by r (A B C, B C A, C A B, ...). The first
    `warmup` rounds are run and discarded. `gc.collect()` runs before every call, outside
    the timed region, so a collection triggered by one side is not billed to the next.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    names = list(sides)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            start = time.perf_counter()
            sides[name]()
            elapsed = time.perf_counter() - start
            if r >= warmup:
                times[name].append(elapsed)
    return times


def summary(times: list[float]) -> dict[str, float]:
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
    }


def paired_ratio_median(num: list[float], den: list[float]) -> float:
    """Median over rounds of num[r] / den[r] (a drift-robust companion to the median ratio)."""
    return statistics.median(a / b for a, b in zip(num, den))


def environment() -> dict[str, Any]:
    import transformers

    import sadi

    load: list[float] | None
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not available on every platform
        load = None
    return {
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "sadi": sadi.__version__,
            "python": platform.python_version(),
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_num_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "loadavg_at_start": load,
        },
    }


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def write_result(name: str, result: Mapping[str, Any], out_dir: Path | None = None) -> Path:
    """Write `result` as `<out_dir>/<name>.json` (default: benchmarks/results/)."""
    directory = out_dir or RESULTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
