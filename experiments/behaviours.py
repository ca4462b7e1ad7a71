"""Behaviour steering on the five CAA behaviours: curves, side effects, generations.

    python experiments/behaviours.py [--dry-run] [--model smollm2_135m]
                                     [--behaviours caa_refusal ...] [--methods caa,sas,...]
                                     [--out experiments/results/behaviours]

Per behaviour (A/B items in the chat template; the fit pairs point towards the behaviour)
and method, offline:

1. a sweep on the select split (100 items) over where and how much to steer, each method
   on its own axes: CAA's layer (every 10% of the depth) x multiplier; SADI-Head's K x
   strength; AUSteer's site x k (alpha 20); SAS's tau x lambda at the layer of the default
   trained SAE (the middle layer; an SAE per layer costs ~20 minutes here). `sadi.select`
   chooses by the behaviour-matching probability (`p_label`: the matching answer's
   probability normalised over A and B, the CAA paper's metric) and scores the chosen point
   once on the report split (CAA's 50 A/B test items), with the open-ended generations
   (saved for reading, no judge) and the MMLU side effect (the first 500 MMLU report
   items, in the same chat form, with and without the vector);
2. a curve on the report split: the strength swept in both directions (CAA multiplier
   -4..4 as the CAA paper, and on to +-16; SAS lambda -8..8, SADI strength -5..80, AUSteer
   alpha -50..50), everything else as chosen on select;
3. `sadi.report.curves`: one plot per behaviour with a line per method and the unsteered
   level, whether each curve is monotonic, its range, with item-bootstrap CIs; and
   `sadi.report`: the chosen points, their side effects and a handful of generations;
   both per behaviour (`<out>/<model>/<behaviour>/`) as soon as its sweeps finish, then over
   every behaviour whose sweeps are on this machine (`<out>/<model>/`; not overwritten when
   it would drop rows whose sweeps are gone: `--replace`).

Choosing on select and drawing the curve on report keeps the report split out of every
choice; the curve itself is descriptive (every strength is shown, none is picked on it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path

from _common import (
    N_LAYERS,
    add_replace,
    chosen,
    finished,
    replace_flag,
    report_cmd,
    run,
    run_combined,
    sadi_run,
    select_cmd,
)

BEHAVIOURS = (
    "caa_sycophancy",
    "caa_hallucination",
    "caa_refusal",
    "caa_myopic_reward",
    "caa_corrigible_neutral_hhh",
)
METHODS = ("caa", "sas", "sadi", "austeer")
# each method's strength axis on the curve, its values, and the parameters chosen on select
CURVES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    # the CAA paper's -4..4, and on to 16: a 135M model may need more than a 7B one
    "caa": ("multiplier", "-16,-8,-4,-2,-1,-0.5,0.5,1,2,4,8,16", ("layer",)),
    "sas": ("lam", "-8,-4,-2,-1,1,2,4,8", ("layer", "tau")),
    "sadi": ("strength", "-5,-2,0,0.5,2,5,10,20,40,80", ("k",)),
    "austeer": ("alpha", "-50,-20,-10,-5,5,10,20,50", ("k",)),
}


def select_grid(method: str, model: str) -> list[str]:
    """The method's sweep on the select split (steering towards the behaviour)."""
    n = N_LAYERS[model]
    if method == "caa":
        layers = sorted({max(1, round(n * f / 10)) for f in range(1, 10)})
        return [
            "intervention=caa",
            "component=residual",
            f"intervention.layer={','.join(map(str, layers))}",
            "intervention.multiplier=0.5,1,2,4",
        ]
    if method == "sas":
        return [
            "intervention=sas",
            "intervention.sae=trained",
            f"intervention.layer={n // 2}",
            "intervention.tau=0.05,0.1,0.2",
            "intervention.lam=1,2,4,8",
        ]
    if method == "sadi":
        return [
            "intervention=sadi",
            "component=head",
            "intervention.k=1,2,4,6,8,10",
            "intervention.strength=2,5,10,20,40,80",
        ]
    return [
        "intervention=austeer",
        "component=head,hidden,residual",
        "intervention.k=16,100",
        "intervention.alpha=20",
    ]


def curve_overrides(method: str, fixed: Mapping[str, object], component: str) -> list[str]:
    """The curve sweep's overrides: the strength grid, the chosen values fixed."""
    param, values, _ = CURVES[method]
    return [
        f"intervention={method}",
        *(["intervention.sae=trained"] if method == "sas" else []),
        f"component={component}",
        *(f"intervention.{k}={v}" for k, v in fixed.items()),
        f"intervention.{param}={values}",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--model", default="smollm2_135m", choices=sorted(N_LAYERS))
    parser.add_argument("--behaviours", nargs="*", default=list(BEHAVIOURS))
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated")
    parser.add_argument("--side-limit", type=int, default=500, help="MMLU report items")
    parser.add_argument("--out", default="experiments/results/behaviours")
    parser.add_argument("--sweeps", default="outputs/sweeps/behaviours")
    parser.add_argument("--report-only", action="store_true", help="only write the reports")
    add_replace(parser)
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    bad = sorted(set(methods) - set(METHODS)) + sorted(set(args.behaviours) - set(BEHAVIOURS))
    if bad:
        parser.error(f"unknown {bad}; methods: {list(METHODS)}, behaviours: {list(BEHAVIOURS)}")
    log = Path(args.out) / f"timings_{args.model}.jsonl"
    common = [f"model={args.model}", "logger=none", "progress=false", "task.open_ended=false"]
    selects, curves = [], []
    out = f"{args.out}/{args.model}"
    root = Path(args.sweeps) / args.model
    for task in args.behaviours:
        task_selects, task_curves = [], []
        for method in methods:
            sweep = f"{args.sweeps}/{args.model}/{task}/{method}"
            curve = f"{args.sweeps}/{args.model}/{task}/{method}_curve"
            selects.append(sweep)  # what the dry run reports; a real run reads what finished
            task_selects.append(sweep)
            curves.append(curve)
            task_curves.append(curve)
            if args.report_only:  # only the reports of what is there
                continue
            name = f"behaviours_{args.model}_{task}_{method}"
            run(
                sadi_run(
                    f"task={task}",
                    *common,
                    "task.splits=[select]",
                    *select_grid(method, args.model),
                    f"sweep_name={name}",
                    f"hydra.sweep.dir={sweep}",
                ),
                args.dry_run,
                log,
            )
            flags = ["--side-effects", "mmlu", "--side-limit", str(args.side_limit)]
            flags += ["--set", "sweep.engine=true", "--set", "task.open_ended=true"]
            if method == "austeer":
                flags.append("--across-components")
            run(select_cmd(sweep, *flags), args.dry_run, log)
            keep = CURVES[method][2]
            if args.dry_run:  # nothing chosen yet: show the command with the grid's first values
                print("# the curve's fixed values are chosen on select; shown: the grid's first")
                grid = dict(a.split("=", 1) for a in select_grid(method, args.model))
                fixed = {k: grid[f"intervention.{k}"].split(",")[0] for k in keep}
                component = grid["component"].split(",")[0] if "component" in grid else "residual"
            else:
                (pick,) = chosen(sweep)
                fixed = {k: pick["params"][k] for k in keep}
                component = pick["component"]
            run(
                sadi_run(
                    f"task={task}",
                    *common,
                    "task.splits=[report]",
                    *curve_overrides(method, fixed, component),
                    f"sweep_name={name}_curve",
                    f"hydra.sweep.dir={curve}",
                ),
                args.dry_run,
                log,
            )
        # the behaviour's own reports, as soon as its sweeps finish: they land even when the
        # sweeps behind the other behaviours are not on this machine any more
        if not args.dry_run:
            task_curves = _curves(root / task, "")
            task_selects = finished(root / task, 1)
        for cmd in _reports(task_curves, task_selects, f"{out}/{task}"):
            run(cmd + replace_flag(args), args.dry_run)
    if not args.dry_run:  # every finished curve and select stage of this model, earlier runs too
        curves, selects = _curves(root, "*/"), finished(root)
        if not curves and not selects:
            sys.exit(f"no finished behaviour sweeps under {root}: nothing to report")
    for cmd in _reports(curves, selects, out):
        run_combined(cmd + replace_flag(args), args.dry_run, f"{out}/<behaviour>/")


def _curves(root: Path, above: str) -> list[str]:
    """Curve sweep directories below `root` that hold a finished point."""
    return sorted({str(p.parent.parent) for p in root.glob(f"{above}*_curve/*/results.json")})


def _reports(curves: list[str], selects: list[str], out: str) -> list[list[str]]:
    """The curves report and the chosen points' report of these sweeps, into `out`."""
    cmds = []
    if curves:
        cmds.append([sys.executable, "-m", "sadi.report.curves", *curves, "--out", f"{out}/curves"])
    if selects:
        cmds.append(report_cmd(selects, out, "--plots", "summary"))
    return cmds


if __name__ == "__main__":
    main()
