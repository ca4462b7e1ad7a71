"""The SAS paper's setting on the embedded model: SAS beside CAA at the same layer.

    python experiments/sas_caa.py [--dry-run] [--layer 15] [--tasks caa_refusal ...]
                                  [--out experiments/results/sas_caa]

Bayat et al. (arXiv 2503.00177) steer Gemma 2 with SAS on the CAA behaviours, report the
behaviour-matching rate against lambda in both directions, TruthfulQA MC1 / MC2, and the
capability cost on MMLU. Here, on SmolLM2-135M-Instruct, offline:

- the SAE: `intervention.sae=trained`, the default TopK SAE of `--layer` (d_sae 8 x d_model,
  k 32, trained once from the task fit splits and cached; `python -m sadi.sae train` makes
  the same one);
- per task (the five CAA behaviours, A/B items in the chat template, and TruthfulQA MC1 /
  MC2): SAS over tau {0.05, 0.1, 0.2} x lambda {-8, -4, -2, -1, 1, 2, 4, 8} and CAA at the
  same layer over multiplier {-4, -2, -1, -0.5, 0.5, 1, 2, 4}, on the select split
  (negative strengths steer away from the behaviour); and the ablation, SAS with random
  features of the same count (`intervention=sas_random`), over the same grid;
- `sadi.select` picks each sweep's point on select and scores it once on report, with the
  MMLU side effect (the first 500 MMLU report items, with and without the chosen vector);
- `sadi.report` draws, per task, SAS's select metric against lambda beside CAA's against
  its multiplier (`methods_<task>.png`), with the unsteered level marked, and lists the top
  SAE features of each chosen SAS vector with their top-activating training tokens.
"""

from __future__ import annotations

import argparse
import sys

from _common import add_replace, replace_flag, report_cmd, run, sadi_run

MODEL = "smollm2_135m"
BEHAVIOURS = (
    "caa_sycophancy",
    "caa_hallucination",
    "caa_refusal",
    "caa_myopic_reward",
    "caa_corrigible_neutral_hhh",
)
TASKS = (*BEHAVIOURS, "truthfulqa_mc1", "truthfulqa_mc2")
LAMBDAS = "-8,-4,-2,-1,1,2,4,8"
TAUS = "0.05,0.1,0.2"
MULTIPLIERS = "-4,-2,-1,-0.5,0.5,1,2,4"


def sweeps(task: str, layer: int) -> dict[str, list[str]]:
    """The sweeps of one task: SAS, its random-features ablation, and CAA at `layer`."""
    common = [
        f"task={task}",
        "task.splits=[select]",
        "task.open_ended=false",
        f"model={MODEL}",
        "logger=none",
        "progress=false",
    ]
    return {
        "sas": [
            *common,
            "intervention=sas",
            "intervention.sae=trained",
            f"intervention.layer={layer}",
            f"intervention.tau={TAUS}",
            f"intervention.lam={LAMBDAS}",
        ],
        "sas_random": [
            *common,
            "intervention=sas_random",
            "intervention.sae=trained",
            f"intervention.layer={layer}",
            f"intervention.tau={TAUS}",
            f"intervention.lam={LAMBDAS}",
        ],
        "caa": [
            *common,
            "intervention=caa",
            "component=residual",
            f"intervention.layer={layer}",
            f"intervention.multiplier={MULTIPLIERS}",
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--layer", type=int, default=15, help="the SAE's and CAA's layer")
    parser.add_argument("--tasks", nargs="*", default=list(TASKS))
    parser.add_argument("--side-limit", type=int, default=500, help="MMLU report items")
    parser.add_argument("--out", default="experiments/results/sas_caa")
    parser.add_argument("--sweeps", default="outputs/sweeps")
    add_replace(parser)
    args = parser.parse_args()
    unknown = sorted(set(args.tasks) - set(TASKS))
    if unknown:
        parser.error(f"unknown tasks {unknown}; choose from {list(TASKS)}")
    dirs = []
    for task in args.tasks:
        for method, overrides in sweeps(task, args.layer).items():
            name = f"sas_caa_{task}_{method}_l{args.layer}"
            sweep = f"{args.sweeps}/{name}"
            run(
                sadi_run(*overrides, f"sweep_name={name}", f"hydra.sweep.dir={sweep}"), args.dry_run
            )
            run(
                [
                    sys.executable,
                    "-m",
                    "sadi.select",
                    sweep,
                    "--logger",
                    "none",
                    "--side-effects",
                    "mmlu",
                    "--side-limit",
                    str(args.side_limit),
                ],
                args.dry_run,
            )
            dirs.append(sweep)
    run(report_cmd(dirs, args.out, *replace_flag(args)), args.dry_run)


if __name__ == "__main__":
    main()
