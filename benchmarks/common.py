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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def load_default_model() -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """The embedded SmolLM2-135M-Instruct (CPU, float32), as every benchmark uses it."""
    from sadi.core.models import load_model

    return load_model(device="cpu")


# Other processes busy above this fraction of the machine's CPU count as contention.
CONTENDED = 0.10


class CpuMeter:
    """CPU used by *other* processes, as a fraction of the whole machine (Linux /proc).

    The benchmarks share the machine with whatever else runs; on 2 cores one busy
    neighbour slows a forward pass several-fold. This meter records, for each timed call,
    how much of the machine others used meanwhile, so contended calls are visible in the
    JSON, and lets a round wait (bounded) for a quiet machine before it starts.
    """

    def __init__(self) -> None:
        self.available = Path("/proc/stat").exists() and Path("/proc/self/stat").exists()
        self._tick = os.sysconf("SC_CLK_TCK") if self.available else 100

    def _sample(self) -> tuple[float, float, float]:
        """(busy jiffies of all CPUs, total jiffies, jiffies of this process and its children)."""
        fields = [float(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
        total = sum(fields[:8])  # guest time is already counted in user
        own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        # utime + stime of all threads, plus cutime + cstime: the waited-for children this
        # process ran itself (lm-eval runs `pip list` and others per evaluation) are ours.
        mine = sum(float(x) for x in own[11:15])
        return total - idle, total, mine

    def start(self) -> tuple[float, float, float] | None:
        return self._sample() if self.available else None

    def foreign(self, since: tuple[float, float, float] | None) -> float | None:
        """Fraction of the machine's CPU used by other processes since `since`."""
        if since is None:
            return None
        busy, total, mine = self._sample()
        d_total = total - since[1]
        if d_total <= 0:
            return 0.0
        return max(0.0, ((busy - since[0]) - (mine - since[2])) / d_total)

    def wait_for_quiet(self, max_wait_s: float, window_s: float = 0.5) -> float:
        """Sleep until others use < CONTENDED of the CPU over a window; returns seconds waited."""
        if not self.available or max_wait_s <= 0:
            return 0.0
        start = time.perf_counter()
        while True:
            mark = self.start()
            time.sleep(window_s)
            busy = self.foreign(mark)
            waited = time.perf_counter() - start
            if busy is None or busy < CONTENDED or waited >= max_wait_s:
                return waited


@dataclass
class Timings:
    """Raw seconds per side and round, with the CPU others used during each call."""

    times: dict[str, list[float]]
    foreign_cpu: dict[str, list[float | None]]
    waited_s: float

    def quiet_rounds(self) -> list[int]:
        """Recorded rounds in which every side ran with others below CONTENDED."""
        n = len(next(iter(self.times.values())))

        def quiet(f: float | None) -> bool:
            return f is not None and f < CONTENDED

        return [r for r in range(n) if all(quiet(v[r]) for v in self.foreign_cpu.values())]

    def quiet_ratio(self, num: str, den: str) -> dict[str, Any]:
        """median(num) / median(den) over the quiet rounds only (None when there are none)."""
        rounds = self.quiet_rounds()
        if not rounds:
            return {"rounds": 0, "ratio": None, "medians_s": None}
        med = {k: statistics.median(v[r] for r in rounds) for k, v in self.times.items()}
        return {"rounds": len(rounds), "ratio": med[num] / med[den], "medians_s": med}

    def contention(self) -> dict[str, Any]:
        fractions = [f for v in self.foreign_cpu.values() for f in v if f is not None]
        return {
            "contended_threshold": CONTENDED,
            "contended_calls": sum(f >= CONTENDED for f in fractions),
            "calls": sum(len(v) for v in self.times.values()),
            "max_foreign_cpu": max(fractions) if fractions else None,
            "waited_for_quiet_s": round(self.waited_s, 1),
            "quiet_rounds": self.quiet_rounds(),
            "foreign_cpu_per_call": self.foreign_cpu,
        }


def interleaved(
    sides: Mapping[str, Callable[[], object]],
    repeats: int,
    warmup: int,
    max_wait_s: float = 0.0,
    total_wait_s: float | None = None,
) -> Timings:
    """Time each side once per round, rounds interleaved; returns raw seconds per side.

    Round r runs the sides in the order rotated by r (A B C, B C A, C A B, ...). The first
    `warmup` rounds are run and discarded. `gc.collect()` runs before every call, outside
    the timed region, so a collection triggered by one side is not billed to the next.
    With `max_wait_s` > 0, a recorded round that follows a contended call first waits (at
    most that long, and at most `total_wait_s`, default 4 * max_wait_s, over all rounds)
    for other processes to go quiet; the CPU they used during every call is recorded either way.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    meter = CpuMeter()
    names = list(sides)
    times: dict[str, list[float]] = {n: [] for n in names}
    foreign: dict[str, list[float | None]] = {n: [] for n in names}
    wait_budget = 4 * max_wait_s if total_wait_s is None else total_wait_s
    waited = 0.0
    last_busy: float | None = None
    for r in range(warmup + repeats):
        if r >= warmup and (last_busy is None or last_busy >= CONTENDED):
            waited += meter.wait_for_quiet(min(max_wait_s, wait_budget - waited))
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            mark = meter.start()
            start = time.perf_counter()
            sides[name]()
            elapsed = time.perf_counter() - start
            busy = last_busy = meter.foreign(mark)
            if r >= warmup:
                times[name].append(elapsed)
                foreign[name].append(None if busy is None else round(busy, 3))
    return Timings(times, foreign, waited)


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
