"""The experiment scripts: dry runs print commands that compose, AUSteer's authors' points."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from sadi.pipeline.config import register_configs

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
register_configs()


def dry_run(script: str, *args: str) -> list[list[str]]:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / script), "--dry-run", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    return [shlex.split(line[2:]) for line in proc.stdout.splitlines() if line.startswith("$ ")]


def overrides(cmd: list[str]) -> list[str]:
    return [a for a in cmd[3:] if "=" in a and not a.startswith(("hydra.", "hydra/"))]


@pytest.mark.parametrize(
    "model, expected",
    [
        (
            "llama2_7b_chat",
            {
                ("boolq", "head", "100", "15"),
                ("copa", "hidden", "16", "50"),
                ("winogrande", "hidden", "2", "100"),
            },
        ),
        ("gemma2_9b_it", {("copa", "hidden", "80", "50")}),
        ("qwen3_8b", {("copa", "head", "8", "20")}),
    ],
)
def test_table1_7b_has_the_authors_austeer_points_and_the_selected_rows(
    model: str, expected: set[tuple[str, ...]]
) -> None:
    cmds = dry_run("table1_7b.py", "--model", model, "--methods", "austeer")
    single = [c for c in cmds if c[1:3] == ["-m", "sadi.run"] and "-m" not in c[3:4]]
    points = [c for c in single if "intervention.name=austeer_authors" in c]
    got = set()
    for cmd in points:
        kv = dict(a.split("=", 1) for a in overrides(cmd))
        got.add((kv["task"], kv["component"], kv["intervention.k"], kv["intervention.alpha"]))
        assert kv["task.format"] == "ab" and kv["model"] == model
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=[*overrides(cmd), "paths.output_dir=/tmp/x"])
        assert cfg.intervention._target_ == "sadi.steerers.austeer.AUSteer"
        assert list(cfg.task.splits) == ["select", "report"]  # a fixed point: reported as is
    assert got == expected
    sweep = next(c for c in cmds if "experiment=austeer" in c)
    assert sweep[3] == "-m" and "task.format=ab" in sweep  # the same format as the points
    assert any(c[2] == "sadi.select" and c[3].endswith(f"austeer_{model}") for c in cmds)
    report = cmds[-1]
    assert report[2] == "sadi.report"
    assert f"outputs/sweeps/austeer_{model}/selected" in report
    assert sum(a.startswith("outputs/authors_points/") for a in report) == len(expected)


def test_table1_7b_runs_every_method_by_default() -> None:
    cmds = dry_run("table1_7b.py")
    sweeps = [c for c in cmds if c[3:4] == ["-m"]]
    methods = ("sadi_head", "sadi_neuron", "sadi_hidden", "iti", "caa", "austeer", "sas")
    assert [next(a for a in c if a.startswith("experiment=")) for c in sweeps] == [
        f"experiment={m}" for m in methods
    ]
    assert all("hydra/launcher=slurm" in c for c in sweeps)  # one command launches on Slurm
    for cmd in sweeps:  # every experiment composes for the 7B model
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=[*overrides(cmd)[:2], "paths.output_dir=x"])
        assert cfg.model.name == "llama2_7b_chat" and list(cfg.task.splits) == ["select"]
    selects = [c for c in cmds if c[2:3] == ["sadi.select"]]
    assert len(selects) == len(methods)
    assert [("--across-components" in c) for c in selects] == [m == "austeer" for m in methods]


TABLE1_METHODS = {"sadi_head", "sadi_neuron", "sadi_hidden", "iti", "caa", "austeer", "sas"}


def _plan(*args: str) -> dict[str, str]:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "table1_7b.py"), "--dry-run", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("#")]
    plan = {"head": lines[0]}
    for line in lines[1:]:
        if line.startswith("#   "):
            name, value = line[4:].split(": ")
            plan[name] = value
    return plan


def test_table1_7b_without_a_gpu_measurement_gives_tokens_not_guessed_hours(
    tmp_path: Path,
) -> None:
    plan = _plan("--gpu-json", str(tmp_path / "none.json"))
    assert "GPU hours: not measured" in plan["head"] and "make gpu-check" in plan["head"]
    assert set(plan) - {"head"} == TABLE1_METHODS
    tokens = {m: float(v.removesuffix("M tokens")) for m, v in plan.items() if m != "head"}
    assert all(v > 0 for v in tokens.values()) and max(tokens, key=tokens.get) == "austeer"


def test_table1_7b_states_gpu_hours_from_the_checks_measured_throughput(tmp_path: Path) -> None:
    """With a GPU run of the check (figures written here by hand, as the check writes
    them), each method's hours follow from its measured throughput and fit cost."""
    sys.path.insert(0, str(ROOT / "experiments"))
    import table1_7b

    methods = {
        m: {"steered_over_plain": 1.0 + 0.1 * i, "fit_s": 2.0 * (i + 1), "fit_pairs": 32}
        for i, m in enumerate(("austeer", "caa", "iti", "lora", "reft", "sadi", "sas"))
    }
    shape = {"plain_forward": {"tokens_per_s": 20000.0}, "methods": methods}
    check = {"gpu": True, "device": "NVIDIA H100 80GB HBM3", "shapes": {"llama2-7b": shape}}
    path = tmp_path / "gpu.json"
    path.write_text(json.dumps(check))
    plan = _plan("--gpu-json", str(path))
    assert "NVIDIA H100 80GB HBM3" in plan["head"] and "20000 tokens/s" in plan["head"]
    hours = {m: float(v) for m, v in plan.items() if m != "head"}
    assert set(hours) == TABLE1_METHODS | {"total"}
    measured = table1_7b.measured_throughput(path)
    assert measured is not None
    for m in TABLE1_METHODS:
        tokens, fitted = table1_7b.forward_tokens(m)
        got = methods[table1_7b.CHECK_METHOD.get(m, m)]
        jobs = len(table1_7b.TOKENS) * (table1_7b.POINTS[m] + 1)
        by_hand = (
            tokens * got["steered_over_plain"] / 20000.0
            + fitted * got["fit_s"] / 32
            + jobs * table1_7b.LOAD_S
        ) / 3600
        assert hours[m] == pytest.approx(by_hand, abs=0.06)
    assert hours["total"] == pytest.approx(sum(hours[m] for m in TABLE1_METHODS), abs=0.4)
    methods["iti"] = {"error": "OutOfMemoryError: ..."}  # a part that failed on the GPU
    path.write_text(json.dumps(check))
    plan = _plan("--gpu-json", str(path))
    assert plan["iti"] == "not measured" and plan["total"].endswith("(1 not measured)")
    check["gpu"] = False  # the tiny CPU run's file: no GPU figures to cost a 7B run with
    path.write_text(json.dumps(check))
    assert "not measured" in _plan("--gpu-json", str(path))["head"]


def test_sas_caa_sweeps_both_methods_at_one_layer_with_the_mmlu_side_effect() -> None:
    cmds = dry_run("sas_caa.py", "--tasks", "caa_refusal", "truthfulqa_mc2", "--layer", "12")
    sweeps = [c for c in cmds if c[3:4] == ["-m"]]
    assert len(sweeps) == 6
    for cmd in sweeps:
        kv = dict(a.split("=", 1) for a in overrides(cmd))
        assert kv["intervention.layer"] == "12" and kv["task.splits"] == "[select]"
        if kv["intervention"].startswith("sas"):
            assert kv["intervention.sae"] == "trained" and "-8" in kv["intervention.lam"]
        else:
            assert kv["intervention"] == "caa" and kv["intervention.multiplier"].startswith("-4")
        first = {k: v.split(",")[0] for k, v in kv.items()}  # one point of the grid
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(
                "config", overrides=[f"{k}={v}" for k, v in first.items()] + ["paths.output_dir=x"]
            )
        assert cfg.intervention.layer == 12
    selects = [c for c in cmds if c[2] == "sadi.select"]
    assert {dict(a.split("=", 1) for a in overrides(c))["intervention"] for c in sweeps} == {
        "sas",
        "sas_random",
        "caa",
    }
    assert len(selects) == 6 and all(c[c.index("--side-effects") + 1] == "mmlu" for c in selects)
    assert cmds[-1][2] == "sadi.report"


def _composes(cmd: list[str]) -> dict[str, str]:
    """The command's overrides as a dict; the first point of its grid must compose."""
    kv = dict(a.split("=", 1) for a in overrides(cmd))
    first = [f"{k}={v.split(',')[0] if not v.startswith('range(') else '5'}" for k, v in kv.items()]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        compose("config", overrides=[*first, "paths.output_dir=x"])
    return kv


def test_table1_cpu_covers_every_task_and_method_with_honest_selection() -> None:
    cmds = dry_run("table1_cpu.py")
    sweeps = [c for c in cmds if c[3:4] == ["-m"]]
    seen = set()
    for cmd in sweeps:
        kv = _composes(cmd)
        assert kv["task.splits"] == "[select]" and kv["task.limit"] == "500"
        seen.add((kv["task"], kv["task.format"], cmd[-1].rsplit("/", 1)[-1]))
    tasks = {(t, f) for t, f, _ in seen}
    assert tasks == {
        *((t, "lm_eval") for t in ("copa", "sst2", "boolq", "winogrande", "mmlu", "xnli_en")),
        ("truthfulqa_mc1", "lm_eval"),
        ("truthfulqa_mc2", "lm_eval"),
        ("copa", "ab"),
        ("boolq", "ab"),
    }
    methods = {m for _, _, m in seen}
    assert methods == {
        "sadi_head",
        "sadi_neuron",
        "sadi_hidden",
        "iti",
        "caa",
        "austeer",
        "sas",
        "sadi_fixed",
        "sadi_random",
    }
    assert {t for t, f, m in seen if m in ("sadi_fixed", "sadi_random")} == {"copa"}
    selects = [c for c in cmds if c[2:3] == ["sadi.select"]]
    assert len(selects) == len(sweeps)
    for cmd in selects:
        assert "sweep.engine=true" in cmd and ("--across-components" in cmd) == cmd[3].endswith(
            "/austeer"
        )
    assert cmds[-1][2] == "sadi.report" and "summary" in cmds[-1]


def test_table1_cpu_writes_each_tasks_report_after_its_sweeps() -> None:
    cmds = dry_run("table1_cpu.py", "--tasks", "sst2,xnli_en", "--methods", "caa,sas")
    reports = [i for i, c in enumerate(cmds) if c[2:3] == ["sadi.report"]]
    assert len(reports) == 3  # one per task, then the combined one
    for i, task in zip(reports, ("sst2", "xnli_en")):
        cmd = cmds[i]
        out = cmd[cmd.index("--out") + 1]
        assert out.endswith(f"table1_cpu/smollm2_135m/{task}")
        sweeps = cmd[3 : cmd.index("--out")]
        root = f"outputs/sweeps/table1_cpu/smollm2_135m/{task}"
        assert sweeps == [f"{root}/caa", f"{root}/sas"]
        assert cmds[i - 1][2] == "sadi.select" and task in cmds[i - 1][3]  # after its sweeps
    combined = cmds[-1]
    assert combined[combined.index("--out") + 1].endswith("table1_cpu/smollm2_135m")
    assert len(combined[3 : combined.index("--out")]) == 4


def test_table1_cpu_gemma_runs_copa_boolq_sst2() -> None:
    cmds = dry_run("table1_cpu.py", "--model", "gemma3_270m", "--no-ablations")
    sweeps = [c for c in cmds if c[3:4] == ["-m"]]
    tasks = {dict(a.split("=", 1) for a in overrides(c))["task"] for c in sweeps}
    assert tasks == {"copa", "boolq", "sst2"} and len(sweeps) == 3 * 7
    for cmd in sweeps:
        kv = _composes(cmd)
        assert kv["model"] == "gemma3_270m"
        if kv.get("intervention") == "caa":  # layers within Gemma 3 270M's 18
            assert max(int(x) for x in kv["intervention.layer"].split(",")) < 18


def test_behaviours_select_then_draw_curves_on_report() -> None:
    cmds = dry_run("behaviours.py", "--behaviours", "caa_refusal")
    runs = [c for c in cmds if c[3:4] == ["-m"]]
    assert len(runs) == 8  # a select sweep and a curve per method
    for select_sweep, curve in zip(runs[::2], runs[1::2]):
        a, b = _composes(select_sweep), _composes(curve)
        assert a["task.splits"] == "[select]" and b["task.splits"] == "[report]"
        assert a["intervention"] == b["intervention"]
        axis = {"caa": "multiplier", "sas": "lam", "sadi": "strength", "austeer": "alpha"}
        values = [float(v) for v in b[f"intervention.{axis[b['intervention']]}"].split(",")]
        assert min(values) < 0 < max(values)  # both directions on the curve
    selects = [c for c in cmds if c[2:3] == ["sadi.select"]]
    assert len(selects) == 4
    for cmd in selects:
        assert cmd[cmd.index("--side-effects") + 1] == "mmlu"
        assert "task.open_ended=true" in cmd and "sweep.engine=true" in cmd
    assert cmds[-2][2] == "sadi.report.curves" and cmds[-1][2] == "sadi.report"


def test_behaviours_writes_each_behaviours_reports_after_its_sweeps() -> None:
    behaviours = ["caa_refusal", "caa_sycophancy"]
    cmds = dry_run("behaviours.py", "--behaviours", *behaviours, "--methods", "caa,sas")
    steps = ("sadi.report.curves", "sadi.report")
    reports = [i for i, c in enumerate(cmds) if c[2:3] and c[2] in steps]
    assert len(reports) == 6  # curves and chosen points per behaviour, then over all
    for (i, j), task in zip(zip(reports[0:4:2], reports[1:4:2]), behaviours):
        curves, chosen = cmds[i], cmds[j]
        root = f"outputs/sweeps/behaviours/smollm2_135m/{task}"
        assert curves[3 : curves.index("--out")] == [f"{root}/caa_curve", f"{root}/sas_curve"]
        assert chosen[3 : chosen.index("--out")] == [f"{root}/caa", f"{root}/sas"]
        assert curves[curves.index("--out") + 1].endswith(f"smollm2_135m/{task}/curves")
        assert chosen[chosen.index("--out") + 1].endswith(f"smollm2_135m/{task}")
        assert cmds[i - 1][3:4] == ["-m"] and task in " ".join(cmds[i - 1])  # after its curve
    combined = cmds[reports[5]]
    assert combined[combined.index("--out") + 1].endswith("behaviours/smollm2_135m")
    assert len(combined[3 : combined.index("--out")]) == 4


def test_behaviours_report_only_rebuilds_each_behaviours_reports_then_the_combined() -> None:
    cmds = dry_run(
        "behaviours.py", "--behaviours", "caa_refusal", "--methods", "caa,sas", "--report-only"
    )
    assert [c[2] for c in cmds if c[2:3]] == ["sadi.report.curves", "sadi.report"] * 2
    root = "outputs/sweeps/behaviours/smollm2_135m/caa_refusal"
    for cmd, out in zip(cmds, ["caa_refusal/curves", "caa_refusal", "curves", ""]):
        assert cmd[cmd.index("--out") + 1].rstrip("/").endswith(f"smollm2_135m/{out}".rstrip("/"))
        assert cmd[3 : cmd.index("--out")] in (
            [f"{root}/caa_curve", f"{root}/sas_curve"],
            [f"{root}/caa", f"{root}/sas"],
        )


@pytest.mark.parametrize(
    "script, args",
    [
        ("table1_cpu.py", ["--tasks", "sst2", "--methods", "caa"]),
        ("behaviours.py", ["--behaviours", "caa_refusal", "--methods", "caa"]),
        ("sas_caa.py", ["--tasks", "caa_refusal"]),
        ("table1_7b.py", ["--methods", "caa", "--local"]),
    ],
)
def test_replace_reaches_every_report_step_and_only_when_asked(
    script: str, args: list[str]
) -> None:
    reports = ("sadi.report", "sadi.report.curves")
    default = [c for c in dry_run(script, *args) if c[2:3] and c[2] in reports]
    asked = [c for c in dry_run(script, *args, "--replace") if c[2:3] and c[2] in reports]
    assert default and all("--replace" not in c for c in default)
    assert len(asked) == len(default) and all(c[-1] == "--replace" for c in asked)


def test_baselines_gives_every_arm_the_same_splits_and_pairs() -> None:
    """Every arm of a task (prompting, steering, LoRA, LoReFT) sweeps the select split only
    with the same pairs and items, composes, and the report covers every arm's sweep."""
    cmds = dry_run("baselines.py", "--tasks", "copa,caa_refusal")
    sweeps = [c for c in cmds if c[2:4] == ["sadi.run", "-m"]]
    arms = {"instruction", "few_shot", "caa", "iti", "lora", "reft"}
    assert len(sweeps) == 2 * len(arms)
    for task in ("copa", "caa_refusal"):
        mine = [overrides(c) for c in sweeps if f"task={task}" in c]
        shared = {o for o in mine[0] if o.startswith("task.")}
        assert "task.splits=[select]" in shared
        assert all(shared <= set(o) for o in mine)  # the same pairs, items and splits
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for cmd in sweeps:
            first = [o.split(",")[0] if "=" in o else o for o in overrides(cmd)]
            cfg = compose("config", overrides=[*first, "paths.output_dir=/tmp/x"])
            assert cfg.task.splits == ["select"]
    report = [c for c in cmds if c[2:3] == ["sadi.report"]]
    assert len(report) == 1 and sum("outputs/sweeps/baselines" in a for a in report[0]) == 12


def test_the_judged_study_judges_caa_the_best_other_method_and_the_prompting_arm() -> None:
    """Per behaviour: CAA and the best other method of the behaviours study (at the values it
    chose on select) and the instruction arm, on the report split, with the judge; the
    judge's check first; every sweep composes."""
    cmds = dry_run("judged.py", "--behaviours", "caa_refusal", "caa_hallucination")
    assert "sadi.serve" in cmds[0] and "sadi.judge.check" in cmds[1]
    runs = [c for c in cmds if c[2:4] == ["sadi.run", "-m"]]
    assert len(runs) == 6
    for cmd in runs:
        args = dict(a.split("=", 1) for a in overrides(cmd) if not a.startswith("-"))
        assert args["task.splits"] == "[report]" and args["judge"] == "openai"
        assert args["task.open_ended"] == "true"
        # a sweep's first point (compose takes one value per key)
        first = [a if "[" in a else a.split(",")[0] for a in overrides(cmd)]
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=[*first, "paths.output_dir=x"])
        assert cfg.judge.model.endswith("-judge")
    methods = [dict(a.split("=", 1) for a in overrides(c))["intervention"] for c in runs]
    assert methods.count("caa") == 2 and methods.count("none") == 2
    prompts = [c for c in runs if "prompt=instruction" in c]
    assert len(prompts) == 2
    curves = [c for c in cmds if c[2:3] == ["sadi.report.curves"]]
    assert {c[c.index("--metric") + 1] for c in curves} == {"judge_behaviour", "p_label"}
    assert all("--levels" in c for c in curves)
