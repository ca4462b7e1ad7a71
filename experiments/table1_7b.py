"""SADI paper, Table 1, on the paper's 7B backbones (needs a GPU and the Hugging Face hub).

    python experiments/table1_7b.py --dry-run            # print the commands
    python experiments/table1_7b.py --model llama2_7b_chat

Every method is swept on the select split with the authors' grid (conf/experiment/*.yaml),
then `sadi.select` scores the report split once for the chosen point. The paper's numbers
(LLaMA2-7B-chat, its own test-set selection) are in ../shared/METHODS.md for comparison; ours
are selected on a validation split, so expect them to be lower or equal.
"""

from __future__ import annotations

import argparse
import sys

from _common import run, sadi_run

TASKS = "copa,xnli_en,mmlu,sst2,boolq,winogrande"
METHODS = ["sadi_head", "sadi_neuron", "sadi_hidden", "iti", "caa"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="llama2_7b_chat")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    common = [f"model={args.model}", f"task={TASKS}", "hydra/launcher=slurm"]
    for method in METHODS:
        run(sadi_run(f"experiment={method}", *common), args.dry_run)
        run(
            [sys.executable, "-m", "sadi.select", f"outputs/sweeps/{method}_{args.model}"],
            args.dry_run,
        )
    sweeps = [f"outputs/sweeps/{m}_{args.model}/selected" for m in METHODS]
    run(
        [sys.executable, "-m", "sadi.report", *sweeps, "--out", f"report/table1_{args.model}"],
        args.dry_run,
    )


if __name__ == "__main__":
    main()
