"""A 16-strength SADI-Head sweep by the sweep engine vs today's per-point path, side by side.

For each task (BoolQ 500 select items, MMLU the first 300, a CAA behaviour, COPA), SADI-Head
is fitted once on the fit split (outside the timing); then, interleaved round by round:

- `per_point`: one steered lm-eval evaluation of the select split by today's path
  (`SteeredLM`, the run's batch size); a sweep by that path costs 16 of these;
- `unsteered`: one unsteered evaluation by today's path;
- `engine_sweep`: the engine scoring the baseline and all 16 strengths on shared prefixes
  (`SweepScores`, nothing on disk), then lm-eval's metrics for each of the 17 from those
  scores (`SweepLM`): the whole sweep;
- `engine_one` (BoolQ, where a target asks for it): the same with the baseline and one
  strength (per extra point: (engine_sweep - engine_one) / 15);
- `engine_baseline`: the baseline alone by the engine.

Ratios: whole sweep = engine_sweep / (16 x per_point), per extra point =
(engine_sweep - engine_one) / 15 / per_point, baseline = engine_baseline / unsteered.
Every side's log-likelihoods are checked against today's path (the engine's must agree).
Memory (BoolQ, the longest contexts): peak resident memory while the engine's sweep runs vs
while one per-point evaluation runs (high-water mark reset before each), with the KV
cache's share.
"""

from __future__ import annotations

import ctypes
import gc
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import (
    RESULTS_DIR,
    environment,
    interleaved,
    load_default_model,
    write_result,
)
from sadi.data.chat import apply_chat_template
from sadi.data.pairs import make_pairs
from sadi.data.tasks import Task, load_task
from sadi.eval.harness import evaluate_split
from sadi.eval.lm import SteeredLM
from sadi.steerers import SADI, Steerer
from sadi.sweep import SweepLM, SweepScores

STRENGTHS = [5.0 * i for i in range(1, 17)]  # the authors' 5..80 step 5: 16 points
K = 4
BATCH = 16  # the run's default (conf/model/smollm2_135m.yaml)
CASES = {  # task: (select items, chat template as its run config says)
    "boolq": (500, False),
    "mmlu": (300, False),
    "caa_sycophancy": (None, True),
    "copa": (None, False),
}
TARGETS = {
    "boolq": {"whole": 0.12, "extra_point": 0.08},
    "mmlu": {"whole": 0.15},
    "caa_sycophancy": {"whole": 0.15},
    "copa": {"whole": 0.6},
    "baseline": 0.7,
    "memory": 1.5,
}
DEFAULT_REPEATS = 3


def _evaluate(lm: Any, task: Task) -> tuple[dict[str, float], list[dict[str, Any]]]:
    return evaluate_split(
        lm, task.splits["select"], task_name=f"bench_{task.name}", metric=task.metric
    )


def engine_sweep(
    model: Any, tok: Any, task: Task, steerers: dict[str, Steerer | None]
) -> tuple[SweepScores, dict[str, list[float]]]:
    """Score all conditions on shared prefixes, then every condition's lm-eval metrics."""
    scores = SweepScores(model, steerers)
    lls = {}
    for name, st in steerers.items():
        lm = SweepLM(
            model, scores=scores, condition=name, steerer=st, tokenizer=tok, batch_size=BATCH
        )
        _, samples = _evaluate(lm, task)
        lls[name] = [ll for s in samples for ll in s["loglikelihoods"]]
    return scores, lls


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} (Linux only)")


def peak_rss(fn: Callable[[], object]) -> dict[str, float]:
    """Peak resident memory of this process while `fn` runs (model pages included): freed
    heap is returned to the OS, the kernel's high-water mark reset (clear_refs 5), then read.
    (A forked child would be cleaner but hangs in torch's thread pool after a fork.)"""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    start = _status_kb("VmRSS:")
    fn()
    peak = _status_kb("VmHWM:")
    return {"start_mb": start / 1024, "peak_mb": peak / 1024, "added_mb": (peak - start) / 1024}


def measured(fn: Callable[[], object], into: list[dict[str, float]]) -> Callable[[], object]:
    """`fn`, its peak resident memory appended to `into` on every call (a few ms of
    clear_refs and malloc_trim inside the timed call, the same for both sides)."""
    return lambda: into.append(peak_rss(fn))


def kv_share(scores: SweepScores) -> dict[str, float]:
    """The largest prefix KV cache the engine held (one chunk), and its bound."""
    scorer = scores.scorer
    return {
        "kv_bytes_per_token": scorer.kv_bytes_per_token(),
        "largest_chunk_cache_mb": scorer.counts["max_prefix_cache_bytes"] / 2**20,
        "cache_mb_bound": scorer.cache_bytes / 2**20,
    }


def run_case(
    name: str,
    model: Any,
    tok: Any,
    repeats: int,
    items: int | None,
    chat: bool,
    max_wait_s: float,
    n_pairs: int = 150,
) -> dict[str, Any]:
    task = load_task(name, limit=None)
    if chat:
        task = apply_chat_template(task, tok)
    if items is not None:
        task.splits["select"] = task.splits["select"][:items]
    pairs = make_pairs(task.splits["fit"], n_pairs=n_pairs, seed=0)
    fitted = SADI("head", k=K, strength=STRENGTHS[0], progress=False).fit(model, tok, pairs)
    points: dict[str, Steerer | None] = {
        f"s{s:g}": fitted.with_params(strength=s) for s in STRENGTHS
    }
    sweep = {"baseline": None, **points}
    one = {"baseline": None, "s5": points["s5"]}
    lls: dict[str, dict[str, list[float]]] = {}
    last: dict[str, SweepScores] = {}

    def today(steerer: Steerer | None, key: str) -> Callable[[], object]:
        def call() -> object:
            lm = SteeredLM(model, steerer=steerer, tokenizer=tok, batch_size=BATCH)
            _, samples = _evaluate(lm, task)
            lls[key] = {
                "s5" if steerer else "baseline": [ll for s in samples for ll in s["loglikelihoods"]]
            }
            return samples

        return call

    def engine(conditions: dict[str, Steerer | None], key: str) -> Callable[[], object]:
        def call() -> object:
            last[key], lls[key] = engine_sweep(model, tok, task, conditions)
            return lls[key]

        return call

    sides: dict[str, Callable[[], object]] = {
        "per_point": today(points["s5"], "per_point"),
        "unsteered": today(None, "unsteered"),
        "engine_sweep": engine(sweep, "engine_sweep"),
        "engine_baseline": engine({"baseline": None}, "engine_baseline"),
    }
    if "extra_point" in TARGETS[name]:  # only where a target asks for it: it costs a round
        sides["engine_one"] = engine(one, "engine_one")
    memory: dict[str, list[dict[str, float]]] = {"per_point": [], "engine_sweep": []}
    if name == "boolq":  # the longest contexts: peak memory during the timed calls
        for side, into in memory.items():
            sides[side] = measured(sides[side], into)
    timings = interleaved(sides, repeats=repeats, warmup=0, max_wait_s=max_wait_s)
    med = {k: statistics.median(v) for k, v in timings.times.items()}
    n = len(STRENGTHS)
    ratios = {
        "whole": med["engine_sweep"] / (n * med["per_point"]),
        "baseline": med["engine_baseline"] / med["unsteered"],
    }
    if "engine_one" in med:
        ratios["extra_point"] = (
            (med["engine_sweep"] - med["engine_one"]) / (n - 1) / med["per_point"]
        )
    agreement = {
        "steered_max_abs_diff": max(
            abs(a - b)
            for a, b in zip(lls["engine_sweep"]["s5"], lls["per_point"]["s5"], strict=True)
        ),
        "baseline_max_abs_diff": max(
            abs(a - b)
            for a, b in zip(
                lls["engine_sweep"]["baseline"], lls["unsteered"]["baseline"], strict=True
            )
        ),
    }
    targets = TARGETS[name]
    result: dict[str, Any] = {
        "task": name,
        "items": len(task.splits["select"]),
        "points": n,
        "times_s": timings.times,
        "medians_s": med,
        "ratios": ratios,
        "targets": {**targets, "baseline": TARGETS["baseline"]},
        "meets_target": {
            **{k: ratios[k] <= t for k, t in targets.items()},
            "baseline": ratios["baseline"] <= TARGETS["baseline"],
        },
        "agreement_with_per_point": agreement,
        "quiet_only": {  # the whole-sweep ratio over quiet rounds only
            **(q := timings.quiet_ratio("engine_sweep", "per_point")),
            "ratio": None if q["ratio"] is None else q["ratio"] / n,
        },
        "contention": timings.contention(),
    }
    if name == "boolq":
        point_mem = max(memory["per_point"], key=lambda m: m["peak_mb"])
        engine_mem = max(memory["engine_sweep"], key=lambda m: m["peak_mb"])
        kv = kv_share(last["engine_sweep"])
        result["memory"] = {
            "engine_sweep": engine_mem,
            "per_point": point_mem,
            "ratio": engine_mem["peak_mb"] / point_mem["peak_mb"],
            "target": TARGETS["memory"],
            "kv_cache": {
                **kv,
                "share_of_engine_peak": kv["largest_chunk_cache_mb"] / engine_mem["peak_mb"],
                "share_of_engine_added": kv["largest_chunk_cache_mb"]
                / max(engine_mem["added_mb"], 1e-9),
            },
        }
        result["meets_target"]["memory"] = result["memory"]["ratio"] <= TARGETS["memory"]
    return result


def run(
    repeats: int | None = None,
    model: Any = None,
    tok: Any = None,
    out_dir: Path | None = None,
    max_wait_s: float = 5.0,
    tasks: tuple[str, ...] = tuple(CASES),
    items: int | None = None,
    n_pairs: int = 150,
) -> dict[str, Any]:
    """Measure every case; write `<out_dir>/sweep.json`, return it. `items` caps every
    task's select items (default: the issue's sizes); `n_pairs` fit pairs (a smoke test's
    quick fit; the figures use 150)."""
    if model is None or tok is None:
        model, tok = load_default_model()
    repeats = repeats or DEFAULT_REPEATS
    kept = earlier_cases(out_dir, exclude=tasks, items=items)
    cases = []
    for name in tasks:
        n, chat = CASES[name]
        n = n if items is None else min(items, n or items)
        case = run_case(name, model, tok, repeats, n, chat, max_wait_s, n_pairs)
        cases.append({**case, "measured": {**environment(), "rounds": repeats}})
        print(f"[sweep] {name}: {cases[-1]['ratios']}", flush=True)
        write_result("sweep", summary(kept + cases, repeats), out_dir)  # each case kept as it ends
    return summary(kept + cases, repeats)


def earlier_cases(
    out_dir: Path | None, exclude: tuple[str, ...], items: int | None
) -> list[dict[str, Any]]:
    """The cases of tasks not measured in this run, from the results file already there
    (each carries when, on what and over how many rounds it was measured): a run over some
    tasks adds to the file instead of erasing the others. Only full-size cases are kept,
    and only into a full-size run."""
    path = (out_dir or RESULTS_DIR) / "sweep.json"
    if items is not None or not path.exists():
        return []
    old = json.loads(path.read_text())
    stamp = {k: old.get(k) for k in ("timestamp", "versions", "machine")}
    return [
        {**c, "measured": c.get("measured", {**stamp, "rounds": old.get("repeats")})}
        for c in old.get("cases", [])
        if c["task"] not in exclude and c["items"] == _full_size(c["task"], c["items"])
    ]


def _full_size(task: str, items: int) -> int:
    n = CASES.get(task, (None, False))[0]
    return items if n is None else n


def summary(cases: list[dict[str, Any]], repeats: int) -> dict[str, Any]:
    return {
        "benchmark": "sweep",
        "description": f"SADI-Head (K={K}), one fit, {len(STRENGTHS)} strengths on the select "
        "split: the sweep engine vs today's per-point lm-eval path, interleaved",
        **environment(),
        "repeats": repeats,
        "warmup": 0,
        "cases": cases,
        "meets_target": {
            f"{c['task']}_{k}": v for c in cases for k, v in c["meets_target"].items()
        },
    }
