"""Table 1 on the embedded CPU models: every method on the paper's tasks, offline, 2 cores.

    python experiments/table1_cpu.py [--dry-run] [--model smollm2_135m | gemma3_270m]
                                     [--tasks copa,boolq_ab ...] [--methods sadi_head,...]
                                     [--out experiments/results/table1_cpu]

Tasks: COPA, SST-2, BoolQ, WinoGrande, MMLU, XNLI-en, TruthfulQA MC1 and MC2 in the lm-eval
format, and COPA and BoolQ in the A/B format AUSteer's authors use (`<task>_ab`); StoryCloze
has no data here. Gemma 3 270M runs COPA, BoolQ and SST-2 by default.

Methods: SADI-Head, -Neuron, -Hidden, ITI, CAA, AUSteer (its site chosen on select like any
other hyperparameter: `sadi.select --across-components`), SAS (the default trained SAE of the
middle layer), and on COPA the SADI ablations (fixed vector, random elements).

Protocol: 150 fit pairs; every hyperparameter chosen on the select split; the chosen point
scored once on the report split, by the sweep engine (the same numbers as lm-eval's per-point
path); 95% bootstrap CIs and the paired test against the unsteered model on the same items
(`sadi.report`). Reports: `<out>/<model>/<task>/report.md` for each task as soon as its sweeps
finish, and `<out>/<model>/report.md` over every finished sweep of the model (it is not
overwritten when it would drop rows whose sweeps are gone: `--replace`). Scored splits are
capped at 500 items (`task.limit=500`: BoolQ's report split has 2270, MMLU's 13042, XNLI's
1490, WinoGrande's 1267; select splits hold 200-500).

Grids (`grids` below; the report's `chosen by` column gives each sweep's number of points):
the authors' axes at coarser steps ("full", 6-30 points a method; AUSteer's 6 each run a
prefix of their own), and smaller grids ("reduced", 3-9 points) on the tasks whose
continuations are as long as their contexts (COPA, WinoGrande, XNLI, TruthfulQA), where a
point costs about half of a full evaluation even on shared prefixes. The authors' full
grids (96-240 points a method) are conf/experiment/*.yaml, run by table1_7b.py on a GPU;
on 2 cores they would take days.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import (
    N_LAYERS,
    add_replace,
    finished,
    replace_flag,
    report_cmd,
    run,
    run_combined,
    sadi_run,
    select_cmd,
)

# name: (task, format)
TASKS = {
    "copa": ("copa", "lm_eval"),
    "sst2": ("sst2", "lm_eval"),
    "boolq": ("boolq", "lm_eval"),
    "winogrande": ("winogrande", "lm_eval"),
    "mmlu": ("mmlu", "lm_eval"),
    "xnli_en": ("xnli_en", "lm_eval"),
    "truthfulqa_mc1": ("truthfulqa_mc1", "lm_eval"),
    "truthfulqa_mc2": ("truthfulqa_mc2", "lm_eval"),
    "copa_ab": ("copa", "ab"),
    "boolq_ab": ("boolq", "ab"),
}
DEFAULT_TASKS = {"smollm2_135m": list(TASKS), "gemma3_270m": ["copa", "boolq", "sst2"]}
# a sweep point costs about half of a full evaluation on these (long continuations)
REDUCED = {"copa", "winogrande", "xnli_en", "truthfulqa_mc1", "truthfulqa_mc2"}
LIMIT = 500
METHODS = ("sadi_head", "sadi_neuron", "sadi_hidden", "iti", "caa", "austeer", "sas")
ABLATIONS = ("sadi_fixed", "sadi_random")  # on COPA only


def grids(model: str) -> dict[str, dict[str, list[str]]]:
    """Per method, the grid of most tasks ("full": the authors' axes at coarser steps, sized
    so that one method costs at most about two evaluations' worth of forwards on a task
    whose points are cheap) and of the tasks with long continuations ("reduced")."""
    n = N_LAYERS[model]
    layers = ",".join(str(round(n * f)) for f in (1 / 6, 1 / 3, 1 / 2, 2 / 3, 5 / 6))
    third, mid, two = round(n / 3), n // 2, round(2 * n / 3)
    return {
        "sadi_head": {  # authors: K 1..10 x strength 5..80 step 5
            "full": ["intervention.k=1,2,4,6,8,10", "intervention.strength=5,10,20,40,80"],
            "reduced": ["intervention.k=1,4,10", "intervention.strength=5,20,80"],
        },
        "sadi_neuron": {  # authors: K 3..500 (10 values) x strength 10..90 (6)
            "full": ["intervention.k=3,10,30,100,300,500", "intervention.strength=10,30,50,90"],
            "reduced": ["intervention.k=10,100,500", "intervention.strength=10,50"],
        },
        "sadi_hidden": {  # authors: K 1..20 step 2 x strength 5..80 step 5
            "full": ["intervention.k=1,2,4,8,12,20", "intervention.strength=5,10,20,40,80"],
            "reduced": ["intervention.k=1,4,20", "intervention.strength=5,20,80"],
        },
        "iti": {  # authors: K 48 of 1024 heads, alpha 15; 13 is 48/1024 of SmolLM2's 270
            "full": ["intervention.k=4,8,13,24,48", "intervention.alpha=1,5,10,15,25"],
            "reduced": ["intervention.k=4,13,48", "intervention.alpha=1,5,15"],
        },
        "caa": {  # authors: multipliers in [-2, 2], layer 13 of 32
            "full": [f"intervention.layer={layers}", "intervention.multiplier=-1,0.5,1,2"],
            "reduced": [
                f"intervention.layer={third},{mid},{two}",
                "intervention.multiplier=-1,1,2",
            ],
        },
        "austeer": {  # authors: 3 sites x k 1..100 (10) x alpha 5..100 (8); a prefix per point
            "full": [
                "component=head,hidden,residual",
                "intervention.k=16,100",
                "intervention.alpha=20",
            ],
            "reduced": [
                "component=head,hidden,residual",
                "intervention.k=16",
                "intervention.alpha=20",
            ],
        },
        "sas": {  # no published defaults: tau and lambda swept
            "full": ["intervention.tau=0.05,0.2", "intervention.lam=-1,1,2,4,8"],
            "reduced": ["intervention.tau=0.1", "intervention.lam=-1,1,4"],
        },
    }


def method_overrides(method: str, model: str) -> list[str]:
    """What selects the method and its component (the grid comes from `grids`)."""
    if method.startswith("sadi_") and method not in ABLATIONS:
        return ["intervention=sadi", f"component={method.removeprefix('sadi_')}"]
    if method in ABLATIONS:
        return [f"intervention={method}", "component=head"]
    if method == "sas":
        return [
            "intervention=sas",
            "intervention.sae=trained",
            f"intervention.layer={N_LAYERS[model] // 2}",
        ]
    if method == "austeer":
        return ["intervention=austeer"]
    return [f"intervention={method}"]


def sweep_overrides(method: str, task: str, model: str) -> list[str]:
    """The whole `sadi.run -m` override list of one method on one task."""
    name, fmt = TASKS[task]
    size = "reduced" if task in REDUCED else "full"
    grid = grids(model)["sadi_head" if method in ABLATIONS else method][size]
    return [
        f"task={name}",
        f"task.format={fmt}",
        f"task.limit={LIMIT}",
        "task.splits=[select]",
        f"model={model}",
        "logger=none",
        "progress=false",
        *method_overrides(method, model),
        *grid,
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--model", default="smollm2_135m", choices=sorted(N_LAYERS))
    parser.add_argument("--tasks", default=None, help=f"comma-separated, of {list(TASKS)}")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated")
    parser.add_argument("--no-ablations", action="store_true", help="skip COPA's SADI ablations")
    parser.add_argument("--report-only", action="store_true", help="only write the report")
    parser.add_argument("--out", default="experiments/results/table1_cpu")
    parser.add_argument("--sweeps", default="outputs/sweeps/table1_cpu")
    add_replace(parser)
    args = parser.parse_args(argv)
    tasks = args.tasks.split(",") if args.tasks else DEFAULT_TASKS[args.model]
    methods = [m for m in args.methods.split(",") if m]
    bad = sorted(set(tasks) - set(TASKS)) + sorted(set(methods) - set(METHODS))
    if bad:
        parser.error(f"unknown {bad}; tasks: {list(TASKS)}, methods: {list(METHODS)}")
    out = Path(args.out) / args.model
    log = out / "timings.jsonl"
    sweeps = []
    for task in tasks:
        extra = list(ABLATIONS) if task == "copa" and not args.no_ablations else []
        task_sweeps = []
        for method in [*methods, *extra]:
            sweep = f"{args.sweeps}/{args.model}/{task}/{method}"
            sweeps.append(sweep)
            task_sweeps.append(sweep)
            if args.report_only:
                continue
            overrides = sweep_overrides(method, task, args.model)
            name = f"table1_cpu_{args.model}_{task}_{method}"
            run(
                sadi_run(*overrides, f"sweep_name={name}", f"hydra.sweep.dir={sweep}"),
                args.dry_run,
                log,
            )
            flags = ["--set", "sweep.engine=true"]
            if method == "austeer":
                flags.append("--across-components")
            run(select_cmd(sweep, *flags), args.dry_run, log)
        # the task's own report, written as soon as its sweeps finish: it lands even when the
        # sweeps behind the other tasks' columns are not on this machine any more
        done = task_sweeps if args.dry_run else finished(Path(args.sweeps) / args.model / task, 1)
        if done:
            run(
                report_cmd(done, out / task, "--plots", "summary", *replace_flag(args)),
                args.dry_run,
            )
    # the report covers every finished sweep of this model, from this and earlier runs
    done = sweeps if args.dry_run else finished(Path(args.sweeps) / args.model)
    planned = [
        f"{args.sweeps}/{args.model}/{t}/{m}"
        for t in DEFAULT_TASKS[args.model]
        for m in [*METHODS, *(ABLATIONS if t == "copa" else ())]
    ]
    missing = sorted(set(planned) - set(done))
    if missing and not args.dry_run:
        print(f"# not run yet, so not in the report ({len(missing)}): {', '.join(missing)}")
    report = report_cmd(done, out, "--plots", "summary", *replace_flag(args))
    run_combined(report, args.dry_run, f"{out}/<task>/report.md")


if __name__ == "__main__":
    main()
