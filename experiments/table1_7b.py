"""SADI paper, Table 1, on the paper's 7B backbones, every method, on a Slurm cluster: one
command launches the sweeps (submitit, one job per point) and the select stages and
AUSteer's authors' points (each a Slurm job), then writes the report where it runs (it only
reads files), with AUSteer's authors' reported points as extra rows.

    python experiments/table1_7b.py --dry-run            # the commands and the GPU-hour plan
    python experiments/table1_7b.py --model llama2_7b_chat
    python experiments/table1_7b.py --model gemma2_9b_it --methods austeer --local

Needs a GPU and the Hugging Face hub (the weights; nothing else is downloaded). Every method
is swept on the select split with the authors' grid (conf/experiment/*.yaml), then
`sadi.select` scores the report split once for the chosen point. The paper's numbers
(LLaMA2-7B-chat, its own test-set selection) are in ../shared/METHODS.md for comparison;
ours are selected on a validation split, so expect them to be lower or equal.

AUSteer runs in the A/B prompt format (`task.format=ab`, the project's equivalent of the
authors' greedy A/B answer), its site chosen on select with k and alpha
(`--across-components`), and its "authors' point" rows: one run per configuration the
authors report for this model, scored on select and report as it is, labelled
`austeer_authors`. The gap between that row and the selected `austeer` row is the cost of
choosing on a validation split instead of on the test set. SAS trains the default TopK SAE
of the middle layer first (`intervention.sae=trained`; on a GPU a few minutes).

GPU hours (printed with --dry-run, per method): from the prepared GPU check's measured
throughput (`make gpu-check` on a GPU machine writes benchmarks/results/gpu.json; its
Llama-2-7B shape in bfloat16): forward tokens from the tasks' measured token counts
(SmolLM2's tokenizer; Llama's gives about as many) and the sweep engine's costs (each context
once per fit, then a few suffix tokens per point; AUSteer a prefix per point), at the
check's plain tokens/s times each method's measured steered/plain ratio, plus its measured
fit seconds per pair, plus LOAD_S seconds of checkpoint loading per Slurm job (the one
figure the check cannot measure without weights: stated as an assumption). Without a GPU
measurement in that file it prints the forward tokens per method and says the hours are not
measured, rather than guessing a throughput.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from _common import add_replace, replace_flag, report_cmd, run, sadi_run

TASKS = "copa,xnli_en,mmlu,sst2,boolq,winogrande"
METHODS = ["sadi_head", "sadi_neuron", "sadi_hidden", "iti", "caa", "austeer", "sas"]
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
LOAD_S = 90.0  # assumed: loading a 7B checkpoint per job (the check builds random weights)
GPU_JSON = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "gpu.json"
CHECK_SHAPE = "llama2-7b"  # the check's shape these models are costed at
# the check measures each registered method once; the table's arms by the method they run
CHECK_METHOD = {"sadi_head": "sadi", "sadi_neuron": "sadi", "sadi_hidden": "sadi"}
N_PAIRS = {"austeer": 1000}  # fit pairs (others: 150)
# per task: (select items, report items, context tokens, continuation tokens per item)
TOKENS = {
    "copa": (300, 500, 7.8, 13.1),
    "xnli_en": (500, 1490, 26.8, 40.9),
    "mmlu": (1000, 13042, 123.5, 4.0),
    "sst2": (300, 572, 36.9, 2.0),
    "boolq": (500, 2270, 147.1, 2.0),
    "winogrande": (500, 1267, 15.9, 13.3),
}
# points per grid (conf/experiment/<method>.yaml)
POINTS = {
    "sadi_head": 96,
    "sadi_neuron": 60,
    "sadi_hidden": 176,
    "iti": 30,
    "caa": 36,
    "austeer": 240,
    "sas": 24,
}
FITS = {"austeer": 3}  # fits per task: one per AUSteer site; k and strengths share a fit


def forward_tokens(method: str) -> tuple[float, int]:
    """(forward tokens, fitted pairs) of one method over the table's tasks."""
    tokens, fitted = 0.0, 0
    for select, report, ctx, cont in TOKENS.values():
        pairs = N_PAIRS.get(method, 150)
        fits = FITS.get(method, 1)
        points = POINTS[method]
        if method == "austeer":  # its own prefix per point: about one engine baseline each
            sweep = points * select * (ctx + cont)
        else:
            sweep = fits * select * ctx + points * select * cont
        tokens += fits * pairs * 2 * (ctx + cont) + sweep + report * (ctx + cont)
        fitted += fits * pairs
    return tokens, fitted


def measured_throughput(path: Path = GPU_JSON) -> dict[str, Any] | None:
    """The GPU check's figures for CHECK_SHAPE (None: no GPU measurement in `path`)."""
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    shape = result.get("shapes", {}).get(CHECK_SHAPE)
    if not result.get("gpu") or not shape or "plain_forward" not in shape:
        return None
    return {"device": result["device"], **shape}


def gpu_hours(method: str, check: dict[str, Any]) -> float | None:
    """GPU hours of one method over the table's tasks at the check's measured figures (None:
    the check skipped the method or it failed there; its JSON says which)."""
    tokens, fitted = forward_tokens(method)
    got = check.get("methods", {}).get(CHECK_METHOD.get(method, method), {})
    if "fit_s" not in got:
        return None
    per_token = got["steered_over_plain"] / check["plain_forward"]["tokens_per_s"]
    fit_s = fitted * got["fit_s"] / got["fit_pairs"]
    jobs = len(TOKENS) * (POINTS[method] + 1)
    return (tokens * per_token + fit_s + jobs * LOAD_S) / 3600


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


def on_slurm(args: list[str], dry_run: bool, local: bool, folder: str) -> None:
    """Run `args` as one Slurm job (submitit; resources of conf/hydra/launcher/slurm.yaml)
    and wait for it, or here with `local`."""
    if local:
        run(args, dry_run)
        return
    print("# one Slurm job (submitit), waited for:", flush=True)
    if dry_run:
        run(args, dry_run=True)
        return
    import submitit
    from omegaconf import OmegaConf

    conf = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf/hydra/launcher/slurm.yaml")
    executor = submitit.AutoExecutor(folder=folder)
    executor.update_parameters(
        timeout_min=conf.timeout_min,
        gpus_per_node=conf.gpus_per_node,
        cpus_per_task=conf.cpus_per_task,
        mem_gb=conf.mem_gb,
        slurm_partition=conf.partition,
        slurm_account=conf.account,
    )
    print("$ " + " ".join(args), flush=True)
    executor.submit(submitit.helpers.CommandFunction(args)).result()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="llama2_7b_chat")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--local", action="store_true", help="run here (a GPU node), no Slurm")
    parser.add_argument("--gpu-json", default=str(GPU_JSON), help="the GPU check's figures")
    add_replace(parser)
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {METHODS}")
    check = measured_throughput(Path(args.gpu_json))
    if check is None:
        print(
            f"# GPU hours: not measured ({args.gpu_json} holds no GPU run of the check; run "
            "`make gpu-check` on a GPU machine). Forward tokens per method (millions):"
        )
        for method in methods:
            print(f"#   {method}: {forward_tokens(method)[0] / 1e6:.1f}M tokens")
    else:
        tps = check["plain_forward"]["tokens_per_s"]
        print(
            f"# GPU hours at the check's measured throughput ({check['device']}, "
            f"{CHECK_SHAPE} bf16: {tps:.0f} tokens/s plain; {LOAD_S:.0f} s assumed load per job):"
        )
        hours = {m: gpu_hours(m, check) for m in methods}
        for method, h in hours.items():
            print(f"#   {method}: " + (f"{h:.1f}" if h is not None else "not measured"))
        known = [h for h in hours.values() if h is not None]
        short = "" if len(known) == len(hours) else f" ({len(hours) - len(known)} not measured)"
        print(f"#   total: {sum(known):.1f}{short}")
    launcher = [] if args.local else ["hydra/launcher=slurm"]
    common = [f"model={args.model}", f"task={TASKS}", *launcher]
    jobs = f"outputs/slurm/{args.model}"
    for method in methods:
        extra = [f"task.format={AUSTEER_FORMAT}"] if method == "austeer" else []
        run(sadi_run(f"experiment={method}", *common, *extra), args.dry_run)
        select = [sys.executable, "-m", "sadi.select", f"outputs/sweeps/{method}_{args.model}"]
        select += ["--set", "sweep.engine=true"]
        if method == "austeer":
            select.append("--across-components")
        on_slurm(select, args.dry_run, args.local, jobs)
    points = authors_point_runs(args.model) if "austeer" in methods else []
    for cmd in points:
        on_slurm(cmd, args.dry_run, args.local, jobs)
    sweeps = [f"outputs/sweeps/{m}_{args.model}/selected" for m in methods]
    point_dirs = [cmd[-1].split("=", 1)[1] for cmd in points]
    run(
        report_cmd([*sweeps, *point_dirs], f"report/table1_{args.model}", *replace_flag(args)),
        args.dry_run,
    )


if __name__ == "__main__":
    main()
