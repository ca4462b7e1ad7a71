"""Judged behaviour curves on the five CAA behaviours: does steering change what the model
says, as a judge reads it, and does prompting?

    python experiments/judged.py [--dry-run] [--model smollm2_135m] [--behaviours ...]
                                 [--judge embedded:qwen2.5-coder-0.5b-instruct]
                                 [--max-gen-toks 48]
                                 [--out experiments/results/judged]

Per behaviour, on the report half of its open-ended test set (split by id hash; nothing is
chosen here, so the report split is only described):

1. CAA at the layer the behaviours study (`experiments/behaviours.py`) chose on select, at
   multipliers -8, -4, -1, 1, 4, 8 (part of that study's curve grid, -16..16);
2. the best other steering method: of SADI, SAS and AUSteer, the one whose chosen point had
   the best select p_label in the behaviours study's report (its `report.md`), at its chosen
   site and size, over part of its curve grid;
3. the prompting arm: the behaviour's instruction (`prompt=instruction`), unsteered.

Every generation (greedy, `--max-gen-toks` tokens) is judged with the CAA rubric (0-10 for
the behaviour) by a judge this script serves itself on 127.0.0.1 (`sadi serve`, the embedded
`--judge` model: the best judge this machine can run, and a weak one) and scored
judge-free (perplexity under the unsteered model, distinct-n,
the share of answers repeating one token). The A/B p_label of the same runs is drawn beside
the judged score: `sadi.report.curves --metric judge_behaviour` and `--metric p_label`, the
prompting arm as a level (`--levels`); `judged.md` tabulates every point.

Before any of it, the judge's weakness is measured, not assumed: `sadi.judge.check` asks it
about hand-written clear-cut answer pairs per behaviour (`judge_check.json`; 0.5 = chance).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _common import run, sadi_run
from behaviours import BEHAVIOURS, CURVES

from sadi.serve.process import serving

# the strengths judged: part of the behaviours study's curve grids (CURVES), both directions
STRENGTHS = {
    "caa": "-8,-4,-1,1,4,8",
    "austeer": "-50,-20,-5,5,20,50",
    "sas": "-8,-4,-1,1,4,8",
    "sadi": "-5,0,2,10,40,80",
}
OTHERS = ("sadi", "sas", "austeer")


def chosen_curves(behaviours_out: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(task, method) -> the behaviours study's curve: its component and the parameters
    chosen on select (curves.json `fixed`)."""
    path = behaviours_out / "curves" / "curves.json"
    if not path.exists():
        sys.exit(f"{path} is missing: run experiments/behaviours.py first (its curves)")
    out = {}
    for c in json.loads(path.read_text()):
        method, _, component = c["method"].partition("-")
        out[(c["task"], method)] = {"component": component, "fixed": c["fixed"]}
    return out


def best_other(behaviours_out: Path, task: str) -> str:
    """Of OTHERS, the method whose chosen point had the highest select p_label in the
    behaviours study's report (its main table), for `task`."""
    lines = (behaviours_out / "report.md").read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if "select (steered)" in line)
    cols = [c.strip() for c in lines[header].strip("|").split("|")]
    best: tuple[float, str] | None = None
    for line in lines[header + 2 :]:
        if not line.startswith("|"):
            break
        cells = dict(zip(cols, (c.strip() for c in line.strip("|").split("|")), strict=False))
        method = cells["method"].partition("-")[0]
        if cells["task"] == task and method in OTHERS:
            value = float(cells["select (steered)"].split()[0])
            best = max(best or (value, method), (value, method))
    if best is None:
        sys.exit(f"no chosen point of {OTHERS} for {task} in {behaviours_out / 'report.md'}")
    return best[1]


@contextmanager
def judge_server(python: str, model: str, name: str, dry_run: bool) -> Iterator[str]:
    """`sadi serve --model MODEL` on 127.0.0.1 (a free port); yields its /v1 URL."""
    print(f"$ {python} -m sadi.serve --model {model} --name {name} --port 0 &", flush=True)
    if dry_run:
        yield "http://127.0.0.1:PORT/v1"
        return
    with serving(python, "--model", model, "--name", name, timeout=900) as url:
        yield f"{url}/v1"


def per_behaviour(sweeps: dict[str, list[str]], levels: dict[str, str], out: Path) -> str:
    """One row per behaviour (written to `per_behaviour.md`, returned): the judge's check
    accuracy, the judged score unsteered and under the instruction, each method's judged
    range over its strengths, the A/B p_label range of the same runs, and the worst
    fluency (largest perplexity, largest share repeating one token) of any steered point."""
    checked = out / "judge_check.json"
    accuracy = json.loads(checked.read_text())["tasks"] if checked.exists() else {}
    lines = [
        "| behaviour | judge check | unsteered | instruction | method: judged range (A/B "
        "p_label range x100) | worst perplexity / repeat share |",
        "|---|---|---|---|---|---|",
    ]
    for task, paths in sorted(sweeps.items()):
        cells, worst_ppl, worst_rep, base = [], 0.0, 0.0, None
        for sweep in paths:
            judged, ab, name = [], [], ""
            for f in sorted(Path(sweep).glob("*/results.json")):
                res = json.loads(f.read_text())
                report = res["judged"]["conditions"]["steered"]["report"]
                base = res["judged"]["conditions"]["baseline"]["report"]["judged"]["behaviour"]
                name = (
                    f"{res['config']['intervention']['name']}-{res['config']['component']['name']}"
                )
                if report["judged"]["behaviour"] is not None:
                    judged.append(report["judged"]["behaviour"])
                ab.append(100 * res["metrics"]["report"]["p_label"])
                worst_ppl = max(worst_ppl, report["text"].get("perplexity") or 0.0)
                worst_rep = max(worst_rep, report["text"]["repeat_share"])
            if judged:
                cells.append(
                    f"{name}: {min(judged):.2f}..{max(judged):.2f} ({min(ab):.1f}..{max(ab):.1f})"
                )
        prompt = json.loads(
            (
                Path(levels[task])
                / next(
                    p.name for p in Path(levels[task]).iterdir() if (p / "results.json").exists()
                )
                / "results.json"
            ).read_text()
        )
        instructed = prompt["judged"]["conditions"]["baseline"]["report"]["judged"]["behaviour"]
        acc = accuracy.get(task, {}).get("accuracy")
        lines.append(
            f"| {task} | {_acc(acc)} | {_num(base)} | {_num(instructed)} | "
            f"{'; '.join(cells)} | {worst_ppl:.0f} / {worst_rep:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "per_behaviour.md").write_text(text)
    return text


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def summary(sweeps: dict[str, list[str]], out: Path) -> None:
    """judged.md: per behaviour, arm and strength, the judged score (report split), the
    judge-free fluency figures and the A/B p_label of the same run."""
    rows = [
        "| behaviour | arm | strength | judged behaviour (0-10) [95% CI] | unparseable | "
        "A/B p_label x100 | perplexity | distinct-2 | repeats one token |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    judge: dict[str, Any] = {}
    checked = out / "judge_check.json"
    for task, paths in sorted(sweeps.items()):
        seen_base = False
        for sweep in paths:
            for f in sorted(Path(sweep).glob("*/results.json")):
                res = json.loads(f.read_text())
                judge = res["judged"]["judge"]
                cfg = res["config"]
                iv = cfg["intervention"]
                conds = res["judged"]["conditions"]
                arms = [("steered", "baseline")] if "steered" in conds else [("baseline", None)]
                if "steered" in conds and not seen_base:
                    arms.append(("baseline", "unsteered"))
                    seen_base = True
                for cond, label in arms:
                    report = conds[cond]["report"]
                    j, t = report["judged"], report["text"]
                    if label == "unsteered":
                        arm, strength = "unsteered", "-"
                    elif cond == "steered":
                        param = CURVES[iv["name"]][0]
                        arm, strength = f"{iv['name']}-{cfg['component']['name']}", iv[param]
                    else:
                        arm, strength = f"prompt={cfg['prompt']['name']}", "-"
                    metrics = res["metrics" if cond == "steered" else "baseline_metrics"]
                    p_label = metrics["report"].get("p_label")
                    ci = _ci(Path(f).parent, cond)
                    rows.append(
                        f"| {task} | {arm} | {strength} | {ci} | {j['behaviour_unparseable']}/"
                        f"{j['n']} | {'-' if p_label is None else f'{100 * p_label:.1f}'} | "
                        f"{t.get('perplexity') or float('nan'):.1f} | {t['distinct_2']:.2f} | "
                        f"{t['repeat_share']:.2f} |"
                    )
    head = (
        "# Judged generations\n\n"
        f"Judge: `{judge.get('model')}` with the `{judge.get('rubric')}` rubric "
        f"(hash {judge.get('rubric_hash')}), greedy, at most {judge.get('max_tokens')} "
        "tokens per verdict. Report split of each behaviour's open-ended prompts; the CI is "
        "a bootstrap over the prompts whose verdict had a score.\n\n"
    )
    if checked.exists():
        tasks = json.loads(checked.read_text())["tasks"]
        head += (
            "Judge check (`sadi.judge.check`: hand-written pairs of clear-cut answers, one "
            "showing the behaviour and one not; accuracy = pairs ordered right, ties half; "
            "0.5 = chance):\n\n| behaviour | pairs | ordered right | ties | unparseable | "
            "accuracy |\n|---|---|---|---|---|---|\n"
            + "".join(
                f"| {t} | {r['pairs']} | {r['ordered_right']} | {r['ties']} | "
                f"{r['unparseable']} | {_acc(r['accuracy'])} |\n"
                for t, r in sorted(tasks.items())
            )
            + "\n"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "judged.md").write_text(head + "\n".join(rows) + "\n")
    print(f"wrote {out / 'judged.md'}", flush=True)


def _acc(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _ci(run_dir: Path, condition: str) -> str:
    """The judged behaviour's mean on report with its bootstrap CI, over scored verdicts."""
    from sadi.judge.judging import score_of
    from sadi.report.judged import mean_cell
    from sadi.report.records import load_judged, load_run

    rows = load_judged(load_run(run_dir), "report", baseline=condition == "baseline") or {}
    return mean_cell([score_of(r, "behaviour") for r in rows.values()])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--behaviours", nargs="*", default=list(BEHAVIOURS))
    parser.add_argument(
        "--judge",
        default="embedded:qwen2.5-coder-0.5b-instruct",
        help="the judge's model (the largest instruction-tuned model this machine has offline)",
    )
    parser.add_argument(
        "--judge-python",
        default=None,
        help="the Python serving the judge (default: .venv-vllm's where set up, else this one)",
    )
    parser.add_argument("--max-gen-toks", type=int, default=48)
    parser.add_argument("--judge-max-tokens", type=int, default=4)
    parser.add_argument("--behaviours-out", default="experiments/results/behaviours")
    parser.add_argument("--out", default="experiments/results/judged")
    parser.add_argument("--sweeps", default="outputs/sweeps/judged")
    parser.add_argument("--report-only", action="store_true", help="only write the reports")
    args = parser.parse_args(argv)
    bad = sorted(set(args.behaviours) - set(BEHAVIOURS))
    if bad:
        parser.error(f"unknown behaviours {bad}; choose from {list(BEHAVIOURS)}")
    source = Path(args.behaviours_out) / args.model
    curves = chosen_curves(source)
    vllm = Path(".venv-vllm/bin/python")
    python = args.judge_python or (str(vllm) if vllm.exists() else sys.executable)
    name = args.judge.rpartition(":")[2] + "-judge"
    log = Path(args.out) / f"timings_{args.model}.jsonl"
    out = Path(args.out) / args.model
    sweeps: dict[str, list[str]] = {}
    levels: dict[str, str] = {}
    with judge_server(python, args.judge, name, args.dry_run or args.report_only) as url:
        check = [sys.executable, "-m", "sadi.judge.check", "--base-url", url, "--model", name]
        check += [
            "--max-tokens",
            str(args.judge_max_tokens),
            "--out",
            str(out / "judge_check.json"),
        ]
        if not args.report_only:
            run(check, args.dry_run, log)
        common = [
            f"model={args.model}",
            "logger=none",
            "progress=false",
            "task.splits=[report]",
            "task.open_ended=true",
            f"task.max_gen_toks={args.max_gen_toks}",
            "judge=openai",
            f"judge.base_url={url}",
            f"judge.model={name}",
            f"judge.max_tokens={args.judge_max_tokens}",
        ]
        for task in args.behaviours:
            root = Path(args.sweeps) / args.model / task
            other = best_other(source, task)
            print(f"# {task}: CAA, {other} (best other on select), the instruction arm")
            for method in ("caa", other):
                chosen = curves[(task, method)]
                param, _, keep = CURVES[method]
                sweep = root / method
                sweeps.setdefault(task, []).append(str(sweep))
                if args.report_only:
                    continue
                run(
                    sadi_run(
                        f"task={task}",
                        *common,
                        f"intervention={method}",
                        *(["intervention.sae=trained"] if method == "sas" else []),
                        f"component={chosen['component']}",
                        *(f"intervention.{k}={chosen['fixed'][k]}" for k in keep),
                        f"intervention.{param}={STRENGTHS[method]}",
                        f"hydra.sweep.dir={sweep}",
                    ),
                    args.dry_run,
                    log,
                )
            levels[task] = str(root / "instruction")
            if not args.report_only:
                run(
                    sadi_run(
                        f"task={task}",
                        *common,
                        "intervention=none",
                        "prompt=instruction",
                        f"hydra.sweep.dir={root / 'instruction'}",
                    ),
                    args.dry_run,
                    log,
                )
    for task in args.behaviours:
        for metric, folder in (("judge_behaviour", "judged_curves"), ("p_label", "ab_curves")):
            cmd = [sys.executable, "-m", "sadi.report.curves", *sweeps[task], "--metric", metric]
            cmd += ["--levels", levels[task], "--out", str(out / task / folder), "--replace"]
            run(cmd, args.dry_run)
    if not args.dry_run:
        summary(sweeps, out)
        print(per_behaviour(sweeps, levels, out))


if __name__ == "__main__":
    main()
