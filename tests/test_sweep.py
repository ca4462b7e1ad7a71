"""Sweeps: fit cache, honest selection, resume after a crash, launchers, W&B offline files."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import sadi.pipeline.scoring as scoring
import sadi.run as run_module
from sadi.infra.cache import get_or_create
from sadi.pipeline.wandb_offline import read_offline_run
from sadi.select import select
from sadi.steerers import SADI
from tests.helpers import tiny_run
from tests.test_run import compose_run, tiny_overrides


def point(model_dir: Path, sweep: Path, k: int, strength: float, *extra: str) -> Path:
    out = sweep / f"intervention.k={k},intervention.strength={strength}"
    overrides = tiny_overrides(model_dir, out, f"intervention.k={k}")
    overrides += [
        f"intervention.strength={strength}",
        "task.splits=[select]",
        f"paths.cache_dir={sweep.parent / 'cache'}",
        *extra,
    ]
    run_module.run(compose_run(overrides))
    return out


def test_second_point_with_the_same_fit_key_does_not_refit(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real_fit = SADI.fit
    monkeypatch.setattr(
        SADI, "fit", lambda self, *a, **k: calls.append(1) or real_fit(self, *a, **k)
    )
    sweep = tmp_path / "sweep"
    first = point(tiny_model_dir, sweep, 3, 2.0)
    second = point(tiny_model_dir, sweep, 3, 6.0)  # strength only changes how it is applied
    assert len(calls) == 1
    hits = [
        json.loads((p / "results.json").read_text())["timings"]["fit_cache_hit"]
        for p in (first, second)
    ]
    assert hits == [0.0, 1.0]
    a = load_file(str(first / "steerer" / "steerer.safetensors"))
    b = load_file(str(second / "steerer" / "steerer.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((second / "steerer" / "steerer.json").read_text())["strength"] == 6.0
    # k re-selects elements of the same fitted delta: the cached fit serves it
    third = point(tiny_model_dir, sweep, 2, 2.0)
    assert len(calls) == 1
    c = load_file(str(third / "steerer" / "steerer.safetensors"))
    assert torch.equal(c["delta"], a["delta"]) and int(c["mask"].sum()) == 2
    top2 = torch.sort(a["delta"].flatten(), descending=True, stable=True).indices[:2]
    assert sorted(c["mask"].flatten().nonzero().flatten().tolist()) == sorted(top2.tolist())
    point(tiny_model_dir, sweep, 2, 2.0, "task.n_pairs=4")  # other pairs: a new fit
    assert len(calls) == 2


def test_select_across_components_chooses_the_site_like_a_hyperparameter(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = tmp_path / "sweep"
    for component in ("head", "neuron"):
        for strength in (2.0, 8.0):
            out = sweep / f"component={component},intervention.strength={strength}"
            overrides = tiny_overrides(tiny_model_dir, out, "intervention.k=2")
            overrides += [
                f"component={component}",
                f"intervention.strength={strength}",
                "task.splits=[select]",
                f"paths.cache_dir={tmp_path / 'cache'}",
            ]
            run_module.run(compose_run(overrides))
    per_site = select(sweep, logger="none")
    assert sorted(s["group"].split("_")[-2] for s in per_site) == ["head", "neuron"]
    (pooled,) = select(
        sweep, logger="none", across_components=True, overrides={"sweep.engine": True}
    )
    printed = capsys.readouterr().out
    best_pct = 100 * max(c["select"] for c in pooled["candidates"])
    assert f"(select acc {best_pct:.2f} of 4 points)" in printed  # the chosen value
    assert pooled["group"].endswith("_sites_sadi") and pooled["n_points"] == 4
    best = max(c["select"] for c in pooled["candidates"])
    assert pooled["chosen"]["select"]["acc"] == best
    report = json.loads((Path(pooled["report_run_dir"]) / "results.json").read_text())
    assert report["sweep_engine"]["used"] and report["scored_splits"] == ["report"]
    # the same report numbers as the per-point path (the engine only changes the speed)
    plain = next(s for s in per_site if s["chosen"]["run_dir"] == pooled["chosen"]["run_dir"])
    assert plain["report"]["metrics"]["acc"] == pooled["report"]["metrics"]["acc"]
    with pytest.raises(ValueError, match="has no 'sweep.engin'"):
        select(sweep, logger="none", overrides={"sweep.engin": True})
    for chosen_key in ("component.name", "task.limit", "intervention.k", "seed"):
        with pytest.raises(ValueError, match="scores the chosen point as chosen"):
            select(sweep, logger="none", overrides={chosen_key: 1})


def _create_once(root: str, log: str) -> None:
    def create(tmp: Path) -> None:
        with open(log, "a") as f:
            f.write("created\n")
        time.sleep(0.5)
        (tmp / "value").write_text("42")

    entry, _ = get_or_create(Path(root), {"k": 1}, create)
    assert (entry / "value").read_text() == "42"


def test_cache_is_safe_when_parallel_jobs_reach_for_the_same_key(tmp_path: Path) -> None:
    log = tmp_path / "log"
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_create_once, args=(str(tmp_path / "c"), str(log))) for _ in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert log.read_text() == "created\n"


def test_select_chooses_on_select_and_reports_once(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    evaluated: list[str] = []
    real = scoring.evaluate_split

    def counting(lm, items, *, task_name: str, **kw):  # type: ignore[no-untyped-def]
        evaluated.append(task_name.rsplit("_", 1)[-1])
        return real(lm, items, task_name=task_name, **kw)

    monkeypatch.setattr(scoring, "evaluate_split", counting)
    sweep = tmp_path / "sweep"
    grid = [(k, s) for k in (2, 3) for s in (2.0, 8.0)]
    dirs = [point(tiny_model_dir, sweep, k, s) for k, s in grid]
    assert "report" not in evaluated and evaluated.count("select") == len(grid) + 1
    (selection,) = select(sweep, logger="none", side_effects=["copa"], side_limit=3)
    # the chosen point, steered and baseline, once; and the side task's report items
    assert evaluated.count("report") == 4 and len(evaluated) == len(grid) + 1 + 4
    values = {
        str(d): json.loads((d / "results.json").read_text())["metrics"]["select"]["acc"]
        for d in dirs
    }
    assert selection["chosen"]["select"]["acc"] == max(values.values())
    assert values[selection["chosen"]["run_dir"]] == max(values.values())
    saved = json.loads((Path(selection["report_run_dir"]).parent / "selection.json").read_text())
    assert saved["report"]["metrics"]["acc"] == selection["report"]["metrics"]["acc"]
    assert saved["n_points"] == len(grid)
    report = json.loads((Path(selection["report_run_dir"]) / "results.json").read_text())
    assert set(report["metrics"]) == {"report"} and report["timings"]["fit_cache_hit"] == 1.0
    side = saved["side_effects"]["copa"]  # only the chosen point pays for the side effect
    assert side["n_items"] == 3 and {"steered", "baseline"} <= set(side)
    assert side == report["side_effects"]["copa"]
    assert all(
        "side_effects" not in json.loads((d / "results.json").read_text())
        or not json.loads((d / "results.json").read_text())["side_effects"]
        for d in dirs
    )


def sweep_command(model_dir: Path, tmp: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sadi.run",
        "-m",
        *tiny_run(model_dir),
        "task.splits=[select]",
        f"paths.cache_dir={tmp / 'cache'}",
        "sweep_name=test",
        f"hydra.sweep.dir={tmp / 'sweep'}",
        *extra,
    ]


def completed(tmp: Path) -> list[Path]:
    return sorted((tmp / "sweep").glob("*/results.json"))


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "joblib", "local"])
def test_two_by_two_sweep_on_each_launcher(
    tiny_model_dir: Path, tmp_path: Path, launcher: str
) -> None:
    extra = ["intervention.k=2,3", "intervention.strength=2,4"]
    if launcher != "basic":
        extra.append(f"hydra/launcher={launcher}")
    if launcher == "joblib":
        extra.append("hydra.launcher.n_jobs=2")
    proc = subprocess.run(
        sweep_command(tiny_model_dir, tmp_path, *extra),
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = completed(tmp_path)
    assert len(done) == 4
    params = {
        (r["config"]["intervention"]["k"], r["config"]["intervention"]["strength"])
        for r in (json.loads(p.read_text()) for p in done)
    }
    assert params == {(2, 2.0), (2, 4.0), (3, 2.0), (3, 4.0)}


@pytest.mark.slow
def test_a_killed_sweep_resumes_without_losing_completed_points(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    cmd = sweep_command(
        tiny_model_dir, tmp_path, "intervention.k=2,3", "intervention.strength=2,3,4"
    )
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 600
    while len(completed(tmp_path)) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {p: p.stat().st_mtime_ns for p in completed(tmp_path)}
    assert 2 <= len(before) < 6, "the sweep should have been killed part-way"
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    after = completed(tmp_path)
    assert len(after) == 6
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # untouched
    assert again.stderr.count("skipping completed point") == len(before)


def test_wandb_offline_run_is_read_back(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    sweep = tmp_path / "sweep"
    out = point(tiny_model_dir, sweep, 3, 4.0, "logger=wandb", "sweep_name=my-sweep")
    results = json.loads((out / "results.json").read_text())
    runs = [read_offline_run(p) for p in sorted((out / "wandb").glob("offline-run-*"))]
    by_type = {r.job_type: r for r in runs}
    assert set(by_type) == {"fit", "eval"}
    ev = by_type["eval"]
    assert ev.group == "my-sweep" and by_type["fit"].group == "my-sweep"
    assert ev.config["intervention"]["k"] == 3 and ev.config["task"]["name"] == "jsonl"
    assert ev.summary["select/acc"] == results["metrics"]["select"]["acc"]
    assert ev.summary["baseline/select/acc"] == results["baseline_metrics"]["select"]["acc"]
    assert any(name.startswith("steerer-") for name in ev.artifacts)
    n_select = len(json.loads((out / "splits.json").read_text())["ids"]["select"])
    tables = [row for row in ev.history if row.get("samples/select/_type") == "table-file"]
    assert [row["samples/select/nrows"] for row in tables] == [n_select]
    assert not (tmp_path / "home" / ".local" / "share" / "wandb").exists()
    assert (out / "wandb-staging").exists()
