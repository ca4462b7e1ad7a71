"""The experiment scripts: dry runs print commands that compose, AUSteer's authors' points."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from sadi.config import register_configs

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
        assert cfg.intervention._target_ == "sadi.steerers.AUSteer"
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
    assert [next(a for a in c if a.startswith("experiment=")) for c in sweeps] == [
        f"experiment={m}"
        for m in ("sadi_head", "sadi_neuron", "sadi_hidden", "iti", "caa", "austeer")
    ]


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
