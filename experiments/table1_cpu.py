"""Table 1 on the embedded CPU model: SmolLM2-135M-Instruct on COPA, offline, 2 cores.

    python experiments/table1_cpu.py [--dry-run] [--out experiments/results/table1_cpu]

Reduced grids (documented here, the full ones are conf/experiment/*.yaml):
- SADI-Head: k in {1, 4, 10} x strength in {2, 5, 10, 20, 40}          (15 points)
- ITI:       k in {4, 13, 24} x alpha in {1, 5, 15}            (9 points; 13 = 48/1024 of 270)
- CAA:       layer in {10, 15, 20} x multiplier in {-1, 1, 2}          (9 points)
150 fit pairs from COPA dev 1-200, selection on dev 201-500 (300 items), report on the 500
test items, scored once for the chosen point of each method.
"""

from __future__ import annotations

import argparse
import sys

from _common import run, sadi_run

MODEL = "smollm2_135m"
COMMON = ["task=copa", "task.splits=[select]", f"model={MODEL}", "logger=none", "progress=false"]
SWEEPS = {
    "sadi_head": [
        "intervention=sadi",
        "component=head",
        "intervention.k=1,4,10",
        "intervention.strength=2,5,10,20,40",
    ],
    "iti": [
        "intervention=iti",
        "component=head",
        "intervention.k=4,13,24",
        "intervention.alpha=1,5,15",
    ],
    "caa": [
        "intervention=caa",
        "component=residual",
        "intervention.layer=10,15,20",
        "intervention.multiplier=-1,1,2",
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--out", default="experiments/results/table1_cpu")
    parser.add_argument("--sweeps", default="outputs/sweeps")
    args = parser.parse_args()
    dirs = []
    for name, overrides in SWEEPS.items():
        sweep = f"{args.sweeps}/table1_cpu_{name}"
        run(
            sadi_run(
                *COMMON, *overrides, f"sweep_name=table1_cpu_{name}", f"hydra.sweep.dir={sweep}"
            ),
            args.dry_run,
        )
        run([sys.executable, "-m", "sadi.select", sweep, "--logger", "none"], args.dry_run)
        dirs.append(sweep)
    run([sys.executable, "-m", "sadi.report", *dirs, "--out", args.out], args.dry_run)


if __name__ == "__main__":
    main()
