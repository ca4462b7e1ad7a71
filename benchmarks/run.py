"""Run the benchmarks and print a compact table: `python -m benchmarks.run [--only NAME]`.

Each benchmark writes its figures to benchmarks/results/<name>.json.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import bench_apply, bench_fit, bench_lm_eval, bench_sae, bench_sweep
from benchmarks.common import CONTENDED, RESULTS_DIR, load_default_model

BENCHMARKS = ("fit", "apply", "lm_eval", "sae", "sweep")


Row = tuple[str, ...]
HEADER: Row = ("case", "baseline s", "measured s", "ratio", "target", "ok", "contended", "quiet")


def rows(name: str, result: dict[str, Any]) -> list[Row]:
    """One table row per comparison: medians, ratio, target, contention, quiet-only ratio."""

    def ok(flag: bool) -> str:
        return "yes" if flag else "NO"

    def busy(contention: dict[str, Any]) -> str:
        return f"{contention['contended_calls']}/{contention['calls']}"

    def quiet(q: dict[str, Any]) -> str:
        return "-" if q["ratio"] is None else f"{q['ratio']:.3f} ({q['rounds']})"

    if name == "fit":
        med = result["medians_s"]
        q = result["quiet_only"]
        return [
            (
                "fit / plain forward (full model)",
                f"{med['plain_full']:.3f}",
                f"{med['fit']:.3f}",
                f"{result['ratio']:.3f}",
                f"<= {result['target']}",
                ok(result["meets_target"]),
                busy(result["contention"]),
                quiet(q["fit_vs_plain_full"]),
            ),
            (
                "fit / plain forward (base, same order)",
                f"{med['plain_base']:.3f}",
                f"{med['fit']:.3f}",
                f"{result['ratio_vs_base']:.3f}",
                "(info)",
                "",
                busy(result["contention"]),
                quiet(q["fit_vs_plain_base"]),
            ),
            *(
                (
                    "AUSteer fit / plain forward (full model)",
                    f"{med['plain_full']:.3f}",
                    f"{med['austeer_fit']:.3f}",
                    f"{au['ratio']:.3f}",
                    f"<= {au['target']}",
                    ok(au["meets_target"]),
                    busy(result["contention"]),
                    quiet(au["quiet_only"]["vs_plain_full"]),
                )
                for au in [result["austeer"]]
                if "austeer" in result
            ),
        ]
    out: list[Row] = []
    if name == "sae":
        f, c, t = result["figures"], result["checks"], result["targets"]
        return [
            (
                "SAE held-out variance explained",
                "",
                f"{f['held_out_variance_explained']:.3f}",
                "",
                f">= {t['variance_explained']}",
                ok(c["variance_explained"]),
                "",
                "",
            ),
            (
                "SAE held-out dead latents",
                "",
                f"{f['held_out_dead_fraction']:.4f}",
                "",
                f"< {t['dead_fraction']}",
                ok(c["dead_fraction"]),
                "",
                "",
            ),
            (
                "SAE held-out L0",
                "",
                f"{f['held_out_l0']:.2f}",
                "",
                f"= {t['l0']}",
                ok(c["l0_equals_k"]),
                "",
                "",
            ),
            (
                "SAE read + train time (s)",
                "",
                f"{f['timings_s']['total_s']:.0f}",
                "",
                f"<= {t['total_s']:.0f}",
                ok(c["total_s"]),
                "",
                "",
            ),
        ]
    if name == "lm_eval":
        med = result["medians_s"]
        for side, ratio in result["ratios"].items():
            target = result["targets"].get(side)
            out.append(
                (
                    f"lm-eval COPA select: {side}",
                    f"{med['unsteered']:.3f}",
                    f"{med[side]:.3f}",
                    f"{ratio:.3f}",
                    f"<= {target}" if target else "(info)",
                    ok(ratio <= target) if target else "",
                    busy(result["contention"]),
                    quiet(result["quiet_only"][side]),
                )
            )
        return out
    if name == "sweep":
        for case in result["cases"]:
            med, n = case["medians_s"], case["points"]
            label = f"sweep {case['task']} ({case['items']} items, {n} strengths)"
            sides = {
                "whole": (f"{n * med['per_point']:.1f}", f"{med['engine_sweep']:.1f}"),
                "extra_point": (
                    f"{med['per_point']:.1f}",
                    f"{(med['engine_sweep'] - med.get('engine_one', 0.0)) / (n - 1):.1f}",
                ),
                "baseline": (f"{med['unsteered']:.1f}", f"{med['engine_baseline']:.1f}"),
            }
            for side, ratio in case["ratios"].items():
                target = case["targets"].get(side)
                out.append(
                    (
                        f"{label}: {side}",
                        *sides[side],
                        f"{ratio:.3f}",
                        f"<= {target}",
                        ok(case["meets_target"][side]),
                        busy(case["contention"]),
                        quiet(case["quiet_only"]) if side == "whole" else "-",
                    )
                )
            if "memory" in case:
                mem = case["memory"]
                kv = mem["kv_cache"]["largest_chunk_cache_mb"]
                out.append(
                    (
                        f"{label}: peak RSS MB (KV cache {kv:.0f})",
                        f"{mem['per_point']['peak_mb']:.0f}",
                        f"{mem['engine_sweep']['peak_mb']:.0f}",
                        f"{mem['ratio']:.3f}",
                        f"<= {mem['target']}",
                        ok(case["meets_target"]["memory"]),
                        "",
                        "",
                    )
                )
        return out
    for case in result["cases"]:
        med = case["medians_s"]
        out.append(
            (
                f"apply {case.get('method', 'sadi')} {case['component']} ({case['mode']}, "
                f"k={case['k']})",
                f"{med['unsteered']:.3f}",
                f"{med['steered']:.3f}",
                f"{case['ratio']:.3f}",
                f"<= {case['target']}",
                ok(case["meets_target"]),
                busy(case["contention"]),
                quiet(case["quiet_only"]),
            )
        )
    return out


def print_table(table: list[Row]) -> None:
    header = HEADER
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header))]
    for i, r in enumerate([header, *table]):
        print(
            "  ".join(
                c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))
            )
        )
        if i == 0:
            print("  ".join("-" * w for w in widths))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--only", choices=BENCHMARKS, help="run one benchmark only")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help=(
            "recorded interleaved rounds per comparison (default: "
            f"fit {bench_fit.DEFAULT_REPEATS}, apply {bench_apply.DEFAULT_REPEATS}, "
            f"lm_eval {bench_lm_eval.DEFAULT_REPEATS}, sweep {bench_sweep.DEFAULT_REPEATS})"
        ),
    )
    parser.add_argument(
        "--max-wait",
        type=float,
        default=None,
        help=(
            "seconds each recorded round may wait for other processes to go quiet "
            "(default: fit 10, apply 5; 0 disables waiting)"
        ),
    )
    parser.add_argument(
        "--items",
        type=int,
        default=bench_lm_eval.DEFAULT_ITEMS,
        help="COPA select items the lm_eval benchmark scores (default: all 300)",
    )
    parser.add_argument(
        "--sweep-items",
        type=int,
        default=None,
        help="cap every sweep task's select items (default: BoolQ 500, MMLU 300, all others)",
    )
    parser.add_argument(
        "--sweep-tasks",
        default=",".join(bench_sweep.CASES),
        help=f"comma-separated sweep tasks (default: {','.join(bench_sweep.CASES)})",
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS_DIR, help="directory for the JSON results"
    )
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if not 2 <= args.items <= bench_lm_eval.DEFAULT_ITEMS:
        parser.error(f"--items must be in 2..{bench_lm_eval.DEFAULT_ITEMS}, got {args.items}")
    sweep_tasks = tuple(t for t in args.sweep_tasks.split(",") if t)
    unknown = sorted(set(sweep_tasks) - set(bench_sweep.CASES))
    if unknown:  # before the model loads and any benchmark runs
        parser.error(f"--sweep-tasks: unknown {unknown}; choose from {list(bench_sweep.CASES)}")
    if args.sweep_items is not None and args.sweep_items < 1:
        parser.error(f"--sweep-items must be >= 1, got {args.sweep_items}")
    names = [args.only] if args.only else list(BENCHMARKS)
    model, tok = load_default_model()
    table: list[Row] = []
    all_ok = True
    for name in names:
        start = time.perf_counter()
        common = {"repeats": args.repeats, "model": model, "tok": tok, "out_dir": args.out}
        if args.max_wait is not None:
            common["max_wait_s"] = args.max_wait
        if name == "fit":
            result = bench_fit.run(**common)
        elif name == "apply":
            result = bench_apply.run(**common)
        elif name == "sweep":
            result = bench_sweep.run(**common, tasks=sweep_tasks, items=args.sweep_items)
        elif name == "sae":
            result = bench_sae.run(out_dir=args.out)
        else:
            result = bench_lm_eval.run(
                repeats=args.repeats or bench_lm_eval.DEFAULT_REPEATS,
                items=args.items,
                model=model,
                tok=tok,
                out_dir=args.out,
                max_wait_s=args.max_wait if args.max_wait is not None else 5.0,
            )
        met = result["meets_target"]
        all_ok = all_ok and bool(all(met.values()) if isinstance(met, dict) else met)
        print(
            f"[{name}] {time.perf_counter() - start:.0f} s, {result['repeats']} repeats "
            f"-> {args.out / (name + '.json')}",
            flush=True,
        )
        table += rows(name, result)
    print()
    print_table(table)
    print()
    print("all targets met" if all_ok else "some targets NOT met (see the table)")
    print(
        "contended: timed calls during which other processes used >= "
        f"{CONTENDED:.0%} of the machine's CPU (see 'contention' in the JSON); "
        "quiet: the ratio over uncontended rounds only (their count)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
