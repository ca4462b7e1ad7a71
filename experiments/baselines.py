"""Does steering beat prompting or a small fine-tune? Every arm on the same splits, chosen on
select, reported once on report, on the embedded CPU model.

    python experiments/baselines.py [--dry-run] [--model smollm2_135m]
                                    [--tasks copa,caa_sycophancy,...] [--out ...]

Arms per task (each a sweep on the select split, then `sadi.select` scores the chosen point
once on the report split):

- `unsteered`: the model as it is (every sweep's baseline; its report samples are the
  unsteered row of the report);
- `instruction`: `prompt=instruction` (the task's instruction file; 1 point);
- `few_shot`: `prompt=few_shot`, k chosen on select;
- `lora`: `intervention=lora` (rank 8 on the attention blocks, the YAML's lr and epochs; one
  fit), its `scale` chosen on select;
- `reft`: `intervention=reft` (LoReFT rank 4 at the middle layer's residual stream, last
  prompt token; one fit), its `strength` chosen on select;
- `caa`, `iti`: the steering methods, reduced grids; the better of the two on select is
  "the best steering method" of the task;
- `prompt + steering`: the better prompting arm on select (its chosen k) combined with the
  best steering method at its chosen layer (CAA) or k (ITI), its strength chosen on select
  again.

Protocol: the same fit pairs for every arm (`task.n_pairs`, fewer on the CAA behaviours,
whose prompts are long: the trained arms' fits are the slow part on 2 cores), the same
select and report items, the tuning budget of each arm in the report's `chosen by` column;
the report tests every arm against the unsteered model and against the best prompting arm,
paired on the report items, and shows per-item steerability. Run times per command are in
`<out>/<model>/timings.jsonl`.

`--reduced` (the committed study's last four behaviours, for the time 2 cores allow): 50
scored items per split, few-shot with k=1 only, CAA the only steering method (so "the best
steering method" is CAA there).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import N_LAYERS, finished, replace_flag, report_cmd, run, sadi_run, select_cmd

TASKS = {  # name: (format, n_pairs, limit per scored split)
    "copa": ("lm_eval", 150, 200),
    "caa_sycophancy": ("ab", 64, 100),
    "caa_refusal": ("ab", 64, 100),
    "caa_hallucination": ("ab", 64, 100),
    "caa_myopic_reward": ("ab", 64, 100),
    "caa_corrigible_neutral_hhh": ("ab", 64, 100),
}
PROMPTS = ("instruction", "few_shot")
STEERING = ("caa", "iti")
TRAINED = ("lora", "reft")
# --reduced (what 2 cores allow for the last behaviours): half the scored items, one shot,
# CAA the only steering method
REDUCED_LIMIT = 50


def grid(arm: str, model: str, reduced: bool = False) -> list[str]:
    """The overrides of one arm's sweep (the tuning grid; its size is the arm's budget)."""
    if reduced and arm == "few_shot":
        return ["prompt=few_shot", "prompt.k=1", "intervention=none"]
    n = N_LAYERS[model]
    third, mid, two = round(n / 3), n // 2, round(2 * n / 3)
    return {
        "instruction": ["prompt=instruction", "intervention=none"],
        "few_shot": ["prompt=few_shot", "prompt.k=1,3", "intervention=none"],
        "lora": ["intervention=lora", "intervention.scale=0.5,1,2"],
        "reft": ["intervention=reft", f"intervention.layer={mid}", "intervention.strength=0.5,1,2"],
        "caa": [
            "intervention=caa",
            f"intervention.layer={third},{mid},{two}",
            "intervention.multiplier=-1,1,2",
        ],
        "iti": ["intervention=iti", "intervention.k=4,13,48", "intervention.alpha=1,5,15"],
    }[arm]


# the axis a prompt + steering sweep fixes at the steering method's chosen value (it tunes
# the strength again on the prompted model)
FIXED_AXIS = {"caa": "layer", "iti": "k"}


def combined_grid(steer: str, chosen: dict, model: str) -> list[str]:
    """The steering method's grid with its non-strength axis fixed at its chosen value."""
    axis = f"intervention.{FIXED_AXIS[steer]}="
    return [
        f"{axis}{chosen[FIXED_AXIS[steer]]}" if o.startswith(axis) else o
        for o in grid(steer, model)
    ]


def task_overrides(task: str, model: str, reduced: bool = False) -> list[str]:
    fmt, n_pairs, limit = TASKS[task]
    limit = REDUCED_LIMIT if reduced else limit
    return [
        f"task={task}",
        f"task.format={fmt}",
        f"task.n_pairs={n_pairs}",
        f"task.limit={limit}",
        "task.splits=[select]",
        "task.open_ended=false",  # the comparison reads scores; generations cost a lot here
        f"model={model}",
        "logger=none",
        "progress=false",
    ]


def best_select(sweep: Path) -> tuple[float, dict]:
    """(the chosen point's select value, its selection.json) of a finished sweep."""
    (path,) = sweep.glob("selected/*/selection.json")
    sel = json.loads(path.read_text())
    return float(sel["chosen"]["select"][sel["metric"]]), sel


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--model", default="smollm2_135m", choices=sorted(N_LAYERS))
    parser.add_argument(
        "--tasks", default=",".join(TASKS), help=f"comma-separated, of {list(TASKS)}"
    )
    parser.add_argument("--report-only", action="store_true", help="only write the report")
    parser.add_argument(
        "--steering",
        default=",".join(STEERING),
        help=f"comma-separated steering methods, of {list(STEERING)}",
    )
    parser.add_argument(
        "--reduced",
        action="store_true",
        help=f"{REDUCED_LIMIT} scored items per split, few-shot k=1, CAA the only steering method",
    )
    parser.add_argument("--replace", action="store_true", help="let the report drop rows")
    parser.add_argument("--out", default="experiments/results/baselines")
    parser.add_argument("--sweeps", default="outputs/sweeps/baselines")
    args = parser.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    bad = sorted(set(tasks) - set(TASKS))
    if bad:
        parser.error(f"unknown {bad}; tasks: {list(TASKS)}")
    out = Path(args.out) / args.model
    log = out / "timings.jsonl"
    root = Path(args.sweeps) / args.model
    planned: list[str] = []
    for task in tasks:
        if args.report_only:
            break
        base = task_overrides(task, args.model, args.reduced)
        steering = ("caa",) if args.reduced else tuple(args.steering.split(","))

        def sweep(arm: str, *overrides: str, task: str = task, base: list[str] = base) -> Path:
            where = root / task / arm
            name = f"baselines_{args.model}_{task}_{arm}"
            run(
                sadi_run(*base, *overrides, f"sweep_name={name}", f"hydra.sweep.dir={where}"),
                args.dry_run,
                log,
            )
            run(select_cmd(str(where), "--set", "sweep.engine=true"), args.dry_run, log)
            return where

        arms = (*PROMPTS, *steering, *TRAINED)
        done = {arm: sweep(arm, *grid(arm, args.model, args.reduced)) for arm in arms}
        if args.dry_run:
            print(
                f"# {task}: then the best prompting arm + the best steering method, both "
                "chosen on select (known once the sweeps above ran)"
            )
            planned += [str(d) for d in done.values()]
            continue
        # the best prompting arm and the best steering method, both chosen on select
        prompt_value, prompt_sel = max((best_select(done[a]) for a in PROMPTS), key=lambda v: v[0])
        steer = max(steering, key=lambda a: best_select(done[a])[0])
        config = json.loads((Path(prompt_sel["chosen"]["run_dir"]) / "results.json").read_text())
        prompt = config["config"]["prompt"]
        fixed = [f"prompt={prompt['name']}"]
        if prompt["name"] == "few_shot":
            fixed.append(f"prompt.k={prompt['k']}")
        print(
            f"# {task}: best prompting arm on select {fixed} ({prompt_value:.4f}); best "
            f"steering method on select {steer}",
            flush=True,
        )
        chosen = best_select(done[steer])[1]["chosen"]["params"]
        sweep(f"prompt_{steer}", *fixed, *combined_grid(steer, chosen, args.model))
    done_sweeps = planned if args.dry_run else finished(root)
    run(report_cmd(done_sweeps, out, "--plots", "summary", *replace_flag(args)), args.dry_run)


if __name__ == "__main__":
    main()
