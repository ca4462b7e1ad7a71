"""SADI paper, Table 1, on the paper's 7B backbones (needs a GPU and the Hugging Face hub),
with AUSteer rows: the authors' reported points next to the points chosen on select.

    python experiments/table1_7b.py --dry-run            # print the commands
    python experiments/table1_7b.py --model llama2_7b_chat
    python experiments/table1_7b.py --model gemma2_9b_it --methods austeer

Every method is swept on the select split with the authors' grid (conf/experiment/*.yaml),
then `sadi.select` scores the report split once for the chosen point. The paper's numbers
(LLaMA2-7B-chat, its own test-set selection) are in ../shared/METHODS.md for comparison; ours
are selected on a validation split, so expect them to be lower or equal.

AUSteer runs in the A/B prompt format (`task.format=ab`, the project's equivalent of the
authors' greedy A/B answer), both its sweep (the authors' k x alpha grid per site) and its
"authors' point" rows: one run per configuration the authors report for this model, scored
on select and report as it is, labelled `austeer_authors` in the table. The gap between
that row and the selected `austeer` row is the cost of choosing on a validation split
instead of on the test set.
"""

from __future__ import annotations

import argparse
import sys

from _common import run, sadi_run

TASKS = "copa,xnli_en,mmlu,sst2,boolq,winogrande"
METHODS = ["sadi_head", "sadi_neuron", "sadi_hidden", "iti", "caa", "austeer"]
AUSTEER_FORMAT = "ab"
SITE = {"attention": "head", "ffn": "hidden", "layer": "residual"}
# (model, task, site, k, alpha, accuracy %) from the authors' log (../shared/METHODS.md)
AUTHORS_POINTS = [
    ("llama2_7b_chat", "boolq", "attention", 100, 15, 76.27),
    ("llama2_7b_chat", "copa", "ffn", 16, 50, 82.80),
    ("llama2_7b_chat", "winogrande", "ffn", 2, 100, 53.28),
    ("gemma2_9b_it", "copa", "ffn", 80, 50, 97.60),
    ("qwen3_8b", "copa", "attention", 8, 20, 95.40),
]


def authors_point_runs(model: str, out: str = "outputs/authors_points") -> list[list[str]]:
    """One `sadi.run` per reported AUSteer configuration of `model` (select + report)."""
    runs = []
    for m, task, site, k, alpha, _ in AUTHORS_POINTS:
        if m != model:
            continue
        runs.append(
            [
                sys.executable,
                "-m",
                "sadi.run",
                f"model={model}",
                f"task={task}",
                f"task.format={AUSTEER_FORMAT}",
                "task.n_pairs=1000",
                "intervention=austeer",
                "intervention.name=austeer_authors",
                f"component={SITE[site]}",
                f"intervention.k={k}",
                f"intervention.alpha={alpha}",
                f"hydra.run.dir={out}/{model}_{task}_{site}_k{k}_a{alpha}",
            ]
        )
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="llama2_7b_chat")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {METHODS}")
    common = [f"model={args.model}", f"task={TASKS}", "hydra/launcher=slurm"]
    for method in methods:
        extra = [f"task.format={AUSTEER_FORMAT}"] if method == "austeer" else []
        run(sadi_run(f"experiment={method}", *common, *extra), args.dry_run)
        run(
            [sys.executable, "-m", "sadi.select", f"outputs/sweeps/{method}_{args.model}"],
            args.dry_run,
        )
    points = authors_point_runs(args.model) if "austeer" in methods else []
    for cmd in points:
        run(cmd, args.dry_run)
    sweeps = [f"outputs/sweeps/{m}_{args.model}/selected" for m in methods]
    point_dirs = [cmd[-1].split("=", 1)[1] for cmd in points]
    run(
        [
            sys.executable,
            "-m",
            "sadi.report",
            *sweeps,
            *point_dirs,
            "--out",
            f"report/table1_{args.model}",
        ],
        args.dry_run,
    )


if __name__ == "__main__":
    main()
