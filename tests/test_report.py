"""Report tables, confidence intervals, paired tests and plots on synthetic run directories.

`build_dirs` is shared with tests/test_notebook.py: it writes run and sweep directories in the
layout of `python -m sadi.run` (results.json, samples, steerer) without running a model.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from safetensors.torch import save_file

from sadi.report import (
    bootstrap_ci,
    collect,
    main,
    paired_test,
    plot_head_heatmap,
    plot_methods,
    plot_strength,
    table,
    to_html,
    to_markdown,
)
from sadi.report.plots import _axes, plot_all
from sadi.report.records import RunRecord

N_LAYERS, N_HEADS = 6, 4


def scores_pair(n: int, p_base: float, gain: float, seed: int) -> tuple[list[float], list[float]]:
    """(steered, baseline) 0/1 scores: baseline has round(p_base * n) ones; steered turns
    round(gain * n) of its zeros into ones, so every discordant item favours steering."""
    rng = np.random.default_rng(seed)
    base = np.zeros(n)
    base[rng.permutation(n)[: round(p_base * n)]] = 1
    steered = base.copy()
    steered[np.flatnonzero(base == 0)[: round(gain * n)]] = 1
    return steered.tolist(), base.tolist()


def _summary(scores: list[float], metric: str = "acc") -> dict[str, float]:
    x = np.asarray(scores)
    stderr = float(x.std(ddof=1) / math.sqrt(len(x)))
    return {metric: float(x.mean()), f"{metric}_stderr": stderr}


def _write_steerer(directory: Path, method: str, component: str, k: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    directory.mkdir(parents=True)
    if method == "caa":
        tensors = {"vectors": torch.randn(N_LAYERS, 16, generator=g)}
    else:
        score = torch.rand(N_LAYERS, N_HEADS, generator=g)
        score = score - 0.5 if method == "sadi" else 0.5 + score / 2
        mask = torch.zeros(N_LAYERS * N_HEADS, dtype=torch.bool)
        mask[score.flatten().topk(k).indices] = True
        name = "delta" if method == "sadi" else "accuracy"
        tensors = {name: score, "mask": mask.view(N_LAYERS, N_HEADS)}
    save_file(tensors, str(directory / "steerer.safetensors"))
    shape = {"n_layers": N_LAYERS, "n_heads": N_HEADS, "head_dim": 4, "d_model": 16}
    meta = {"method": method, "component": component, "k": k, "fingerprint": shape}
    (directory / "steerer.json").write_text(json.dumps({**meta, "model_id": "tiny-random"}))


def write_run(
    run_dir: Path,
    scores: dict[str, tuple[list[float], list[float]]],
    *,
    intervention: str = "sadi",
    component: str = "head",
    params: dict[str, Any] | None = None,
    task: str = "copa",
    samples: bool = True,
    metric: str = "acc",
) -> Path:
    """One run directory; `scores` maps split -> (steered, baseline) per-item scores of
    `metric`, the task's primary metric."""
    run_dir.mkdir(parents=True)
    steered = intervention != "none"
    params = dict(params or {})
    cfg = {
        "task": {"name": task, "primary_metric": metric, "splits": list(scores)},
        "model": {"name": "tiny"},
        "component": {"name": component},
        "intervention": {"name": intervention, "_target_": "x", "seed": 0, **params},
    }
    results = {
        "config": cfg,
        "metrics": {s: _summary(st if steered else b, metric) for s, (st, b) in scores.items()},
        "baseline_metrics": {s: _summary(b, metric) for s, (_, b) in scores.items()},
        "steered": steered,
        "steerer": str(run_dir / "steerer") if steered else None,
    }
    (run_dir / "results.json").write_text(json.dumps(results))
    for split, (st, b) in scores.items():
        if not samples:
            continue
        files = {"": st, "_baseline": b} if steered else {"": b}
        for suffix, values in files.items():
            rows = [{"id": f"{task}-{i}", "label": 0, metric: v} for i, v in enumerate(values)]
            text = "".join(json.dumps(r) + "\n" for r in rows)
            (run_dir / f"samples_{task}_{split}{suffix}.jsonl").write_text(text)
    if steered:
        k = int(params.get("k", params.get("layer", 3)))
        _write_steerer(run_dir / "steerer", intervention, component, k, seed=k)
    return run_dir


def write_grids(
    root: Path, grids: dict[str, tuple[str, list[dict[str, Any]]]], n: int, task: str = "copa"
) -> None:
    """A sweep per method under root/<method>/<i>: `grids` maps method -> (component, the
    points' params); point i gains 0.02 * i over the baseline on the select split."""
    for method, (component, grid) in grids.items():
        for i, params in enumerate(grid):
            write_run(
                root / method / str(i),
                {"select": scores_pair(n, 0.5, 0.02 * i, i)},
                intervention=method,
                component=component,
                params=params,
                task=task,
            )


def build_dirs(root: Path, layout: Literal["select", "flat", "none"] = "select") -> list[Path]:
    """Synthetic runs; returns [SADI sweep, ITI run, CAA run, unsteered run].

    The SADI sweep has 2 K x 3 strengths scored on the select split; k=4, strength=5 is best.
    `layout` "select": as `python -m sadi.select` writes it (selection.json listing its
    candidates and the report run in `selected/<group>/`); "flat": selection.json and the
    report run in the sweep directory itself, no candidates listed; "none": no select stage.
    The ITI run has samples, the CAA run only results.json. Report split: baseline 60%,
    SADI 75%, ITI and CAA 66%.
    """
    sweep = root / "sweep_sadi"
    points = []
    for i, (k, strength) in enumerate((k, s) for k in (2, 4) for s in (1.0, 5.0, 10.0)):
        gain = 0.1 if (k, strength) == (4, 5.0) else 0.02 * k * min(strength, 5.0) / 5
        params = {"k": k, "strength": strength, "mode": "online"}
        select = {"select": scores_pair(300, 0.55, gain, 1)}
        points.append(write_run(sweep / f"{i}_k={k}_s={strength}", select, params=params))
    if layout != "none":
        group = sweep / "selected" / "copa_tiny_head_sadi" if layout == "select" else sweep
        report = {"report": scores_pair(200, 0.6, 0.15, 2)}
        report_dir = write_run(group / "report", report, params={"k": 4, "strength": 5.0})
        results = json.loads((report_dir / "results.json").read_text())
        chosen = json.loads((points[4] / "results.json").read_text())
        sel: dict[str, Any] = {
            "metric": "acc",
            "chosen": {
                "run_dir": str(points[4]),
                "overrides": points[4].name,
                "params": chosen["config"]["intervention"],
                "select": chosen["metrics"]["select"],
            },
            "report": {k: results[k]["report"] for k in ("metrics", "baseline_metrics")},
            "report_run_dir": str(report_dir),
            "n_points": 6,
        }
        if layout == "select":
            sel["candidates"] = [{"run_dir": str(p), "select": 0.5} for p in points]
        (group / "selection.json").write_text(json.dumps(sel))
    both = {"select": scores_pair(300, 0.55, 0.05, 3), "report": scores_pair(200, 0.6, 0.06, 2)}
    iti = write_run(root / "iti_run", both, intervention="iti", params={"k": 3, "alpha": 15.0})
    caa = write_run(
        root / "caa_run",
        both,
        intervention="caa",
        component="residual",
        params={"layer": 3, "multiplier": 1.0},
        samples=False,
    )
    none = write_run(root / "none_run", both, intervention="none", component="head")
    return [sweep, iti, caa, none]


@pytest.fixture
def dirs(tmp_path: Path) -> list[Path]:
    return build_dirs(tmp_path / "runs")


def test_bootstrap_ci_binary() -> None:
    x = np.zeros(500)
    x[np.random.default_rng(0).permutation(500)[:350]] = 1  # p = 0.7
    e = bootstrap_ci(x, n_resamples=2000, seed=0)
    assert e.value == pytest.approx(0.7) and e.n == 500
    assert e.lo is not None and e.hi is not None and e.lo < 0.7 < e.hi
    # normal approximation: 1.96 * sqrt(0.7 * 0.3 / 500) = 0.0402
    assert 0.035 < (e.hi - e.lo) / 2 < 0.046
    assert bootstrap_ci(x, seed=0) == e  # seeded
    wide = bootstrap_ci(x[:125], seed=0)
    assert wide.lo is not None and wide.hi is not None
    assert (wide.hi - wide.lo) == pytest.approx(2 * (e.hi - e.lo), rel=0.2)  # ~ 1 / sqrt(n)


def test_paired_test_identical_scores() -> None:
    a, _ = scores_pair(200, 0.6, 0.0, 0)
    t = paired_test(a, a)
    assert t.test == "mcnemar" and t.p_value == 1.0 and t.diff.value == 0.0
    c = np.random.default_rng(0).random(200)
    t = paired_test(c, c)
    assert t.test == "bootstrap" and t.p_value == 1.0 and t.diff.lo == t.diff.hi == 0.0


def test_paired_test_large_consistent_difference() -> None:
    steered, base = scores_pair(200, 0.6, 0.15, 0)
    t = paired_test(steered, base)
    assert t.test == "mcnemar" and t.p_value == pytest.approx(2 * 0.5**30)  # 30 vs 0 discordant
    assert t.diff.value == pytest.approx(0.15) and t.diff.lo is not None and t.diff.lo > 0
    c = np.random.default_rng(0).random(200)
    t = paired_test(c + 0.1 + 0.01 * np.random.default_rng(1).standard_normal(200), c)
    assert t.test == "bootstrap" and t.p_value < 0.01


def test_mcnemar_exact_value() -> None:
    a = [1.0] * 8 + [0.0] * 2 + [1.0] * 5
    b = [0.0] * 8 + [1.0] * 2 + [1.0] * 5  # 8 vs 2 discordant
    assert paired_test(a, b).p_value == pytest.approx(2 * (1 + 10 + 45) / 2**10)


@pytest.mark.parametrize("layout", ["select", "flat"])
def test_collect_uses_selection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: Literal["select", "flat"]
) -> None:
    dirs = build_dirs(tmp_path / "runs", layout)
    records = collect(dirs)
    assert [r.method for r in records] == ["sadi-head", "iti-head", "caa-residual", "none"]
    sadi = records[0]
    assert sadi.params["k"] == 4 and sadi.params["strength"] == 5.0
    assert sadi.chosen_by == "selection.json (6 points)"
    assert len(sadi.points) == 6  # the report run is not a point of the sweep
    assert sadi.metrics["report"]["acc"] == pytest.approx(0.75)
    assert sadi.sample_dirs["report"].name == "report"
    # a directory above everything: the same four records, the sweep not split in two
    assert sorted(r.method for r in collect([tmp_path / "runs"])) == sorted(
        r.method for r in records
    )
    monkeypatch.chdir(tmp_path)  # relative paths against the absolute ones in selection.json
    (rel,) = collect(["runs/sweep_sadi"])
    assert len(rel.points) == 6 and rel.run_dir == sadi.run_dir
    for f in (tmp_path / "runs").rglob("selection.json"):  # no candidates listed
        f.write_text(
            json.dumps({k: v for k, v in json.loads(f.read_text()).items() if k != "candidates"})
        )
    (unlisted,) = collect(["runs/sweep_sadi"])
    assert len(unlisted.points) == 6 and unlisted.chosen_by == sadi.chosen_by


def test_collect_without_selection_chooses_on_select(tmp_path: Path) -> None:
    (sweep, *_) = build_dirs(tmp_path, layout="none")
    (rec,) = [r for r in collect([sweep]) if r.points]
    assert (rec.params["k"], rec.params["strength"]) == (4, 5.0)
    assert rec.chosen_by.startswith("best select/acc")


def test_table_markdown_html(dirs: list[Path]) -> None:
    rows = table(collect(dirs), n_resamples=500)
    by = {r["method"]: r for r in rows}
    assert rows[0]["method"] == "none"  # the unsteered row first within a task
    assert by["sadi-head"]["p_value"] < 1e-6 and by["sadi-head"]["test"] == "mcnemar"
    assert by["none"]["p_value"] is None and by["caa-residual"]["report"].lo is None
    md = to_markdown(rows, n_resamples=500)
    assert "chosen on the **select** split" in md and "shown once" in md
    sadi_line = next(line for line in md.splitlines() if "| sadi-head |" in line)
    assert "| 75.0 [" in sadi_line and "| 60.0 [" in sadi_line and "| +15.0 [+" in sadi_line
    assert "k=4, strength=5.0" in sadi_line and "selection.json" in sadi_line
    # each value under its own header; the unsteered model on select sits beside the chosen
    # point's select value (scores_pair: 55% unsteered, +10 points at k=4, strength=5)
    header = next(line for line in md.splitlines() if line.startswith("| task | model |"))
    cells = dict(zip(header.strip("|").split("|"), sadi_line.strip("|").split("|"), strict=True))
    got = {k.strip(): v.strip() for k, v in cells.items()}
    assert got["select (steered)"].startswith("65.0 [")
    assert got["select (baseline)"].startswith("55.0 [")
    assert got["report (steered)"].startswith("75.0 [")
    assert got["report (baseline)"].startswith("60.0 [")
    caa_line = next(line for line in md.splitlines() if "| caa-residual |" in line)
    assert "66.0 +- 3.4 (CI n/a)" in caa_line
    page = to_html(rows)
    assert page.startswith("<!DOCTYPE html>") and "<td>iti-head</td>" in page
    cells_html = re.findall(r"<td[^>]*>(.*?)</td>", page)
    assert "66.0 +- 3.4 (CI n/a)" in [re.sub("<[^>]+>", "", c) for c in cells_html]
    assert "<style>" in page and '<table class="sortable">' in page and "<script>" in page


def test_plots_written(dirs: list[Path], tmp_path: Path) -> None:
    records = collect(dirs)
    sadi, iti, caa, _ = records
    out = tmp_path / "out"
    out.mkdir()
    p = plot_strength(sadi.points, out / "strength.png", sadi)
    assert p is not None and p.stat().st_size > 1000
    for rec in (sadi, iti):
        assert rec.steerer_dir is not None
        p = plot_head_heatmap(rec.steerer_dir, out / f"heads_{rec.method}.png")
        assert p is not None and p.stat().st_size > 1000
    assert caa.steerer_dir is not None and plot_head_heatmap(caa.steerer_dir, out / "x.png") is None
    (p,) = plot_methods(table(records, n_resamples=200), out)
    assert p.stat().st_size > 1000


def test_cli(dirs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    assert main([*map(str, dirs), "--out", str(out), "--resamples", "300"]) == 0
    assert "| sadi-head |" in capsys.readouterr().out
    pngs = sorted(p.name for p in out.glob("*.png"))
    # strength, 2 heads, bars; no delta heatmap for a one-task report (one column)
    assert len(pngs) == 4 and all((out / p).stat().st_size > 0 for p in pngs)
    assert "deltas_tiny.png" not in pngs
    assert "data:image/png;base64," in (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    assert "![" in md and "## Report deltas, method x task" in md
    summary = tmp_path / "summary"
    assert main([*map(str, dirs), "--out", str(summary), "--plots", "summary"]) == 0
    assert sorted(p.name for p in summary.glob("*.png")) == ["methods_copa_tiny.png"]


def test_a_report_is_not_overwritten_by_one_that_drops_its_rows(
    dirs: list[Path], tmp_path: Path
) -> None:
    from sadi.report.guard import report_keys

    out = tmp_path / "report"
    assert main([*map(str, dirs), "--out", str(out), "--resamples", "100"]) == 0
    full = (out / "report.md").read_text()
    keys = report_keys(full)
    assert {k[2] for k in keys} == {"sadi-head", "iti-head", "caa-residual", "none"}
    assert main([*map(str, dirs), "--out", str(out), "--resamples", "100"]) == 0  # same rows
    with pytest.raises(SystemExit, match="iti-head.*--replace"):
        main([str(dirs[0]), "--out", str(out), "--resamples", "100"])
    assert (out / "report.md").read_text() == full  # nothing written
    assert main([str(dirs[0]), "--out", str(out), "--resamples", "100", "--replace"]) == 0
    assert set(report_keys((out / "report.md").read_text())) < set(keys)


def test_pivot_shows_each_methods_delta_per_task_with_its_test(dirs: list[Path]) -> None:
    from sadi.report import pivot_markdown

    rows = table(collect(dirs), n_resamples=300)
    md = pivot_markdown(rows)
    lines = md.splitlines()
    assert lines[0] == "| method | copa [acc] |"
    assert lines[2] == "| unsteered | 60.0 |"
    # SADI gains 15 points on 200 items, all discordant pairs its way: p < 0.05
    assert "| sadi-head | +15.0* |" in lines and "| caa-residual | - |" in lines


def test_ab_format_is_named_in_the_table_and_generations_are_shown(tmp_path: Path) -> None:
    from sadi.report import generation_section

    run = write_run(tmp_path / "ab", {"report": scores_pair(40, 0.5, 0.1, 0)})
    res = json.loads((run / "results.json").read_text())
    res["config"]["task"]["format"] = "ab"
    (run / "results.json").write_text(json.dumps(res))
    for suffix, text in (("", "Sure | yes"), ("_baseline", "No.")):
        rows = [
            {"id": f"q{i}", "prompt": f"Q{i}\n?", "generation": f"{text} {i}"} for i in range(5)
        ]
        (run / f"generations_copa{suffix}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows)
        )
    (rec,) = collect([run])
    assert rec.task_label == "copa (ab)"
    (row,) = table([rec], n_resamples=100)
    assert row["task"] == "copa (ab)"
    ((title, md),) = generation_section([rec], n=2)
    assert title == "Generations"
    assert "| copa (ab) | sadi-head | Q0 ? | No. 0 | Sure / yes 0 |" in md
    assert "Q2" not in md


def test_strength_axes_per_method(tmp_path: Path) -> None:
    grids = {
        "caa": ("residual", [{"layer": la, "multiplier": m} for la in (2, 3) for m in (-1, 1)]),
        "iti": ("head", [{"k": k, "alpha": a} for k in (4, 8) for a in (5.0, 15.0)]),
    }
    write_grids(tmp_path, grids, 50)
    for method in grids:
        (rec,) = collect([tmp_path / method])
        assert len(rec.points) == 4
        assert (
            _axes(rec.points) == {"caa": ("multiplier", ["layer"]), "iti": ("alpha", ["k"])}[method]
        )
        assert plot_strength(rec.points, tmp_path / f"{method}.png", rec) is not None


def test_collect_names_the_fix_for_an_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="python -m sadi.run"):
        collect([tmp_path])


def test_austeer_units_plot_and_axes(tmp_path: Path) -> None:
    """An AUSteer sweep plots select vs alpha (a line per k) and its fitted unit momentum."""
    from sadi.report.heatmaps import plot_units, units_chart
    from sadi.steerers import AUSteer
    from tests.conftest import PAIRS, byte_tokenizer, make_tiny

    model = make_tiny("llama")
    au = AUSteer("hidden", k=5, alpha=4.0, progress=False).fit(model, byte_tokenizer(), PAIRS)
    grid = [{"k": k, "alpha": a, "variant": "momentum"} for k in (5, 8) for a in (5.0, 15.0)]
    for i, params in enumerate(grid):
        run = write_run(
            tmp_path / "sweep" / str(i),
            {"select": scores_pair(50, 0.5, 0.02 * i, i)},
            intervention="austeer",
            component="hidden",
            params=params,
        )
        au.with_params(k=params["k"], alpha=params["alpha"]).save(run / "steerer")
    (rec,) = collect([tmp_path / "sweep"])
    assert _axes(rec.points) == ("alpha", ["k"])
    assert rec.steerer_dir is not None
    png = plot_units(rec.steerer_dir, tmp_path / "units.png")
    assert png is not None and png.stat().st_size > 0
    about = f"{LONG_TASK}, austeer-hidden ({LONG_MODEL})"
    chart = units_chart(rec.steerer_dir, about)
    assert chart is not None
    titles_inside(chart.figure)
    words(chart.caption, about, "units it steers")
    assert plot_head_heatmap(rec.steerer_dir, tmp_path / "heads.png") is None
    iti_dir = build_dirs(tmp_path / "other")[1] / "steerer"
    assert plot_units(iti_dir, tmp_path / "none.png") is None


def test_sas_and_caa_on_one_behaviour_side_by_side(tmp_path: Path) -> None:
    """SAS (lambda, a line per tau) and CAA (multiplier, a line per layer) swept on the same
    task: one figure with a panel per method, each on its own strength axis."""
    from sadi.report.plots import plot_methods_side_by_side

    grids = {
        "sas": ("residual", [{"lam": la, "tau": t} for la in (-2, 2, 4) for t in (0.1, 0.2)]),
        "caa": ("residual", [{"layer": 15, "multiplier": m} for m in (-1, 1, 2)]),
    }
    write_grids(tmp_path, grids, 50, task="caa_sycophancy")
    records = collect([tmp_path / "sas", tmp_path / "caa"])
    sas = next(r for r in records if r.intervention == "sas")
    assert _axes(sas.points) == ("lam", ["tau"])
    p = plot_methods_side_by_side(records, tmp_path / "side.png", "caa_sycophancy")
    assert p is not None and p.stat().st_size > 1000
    assert plot_methods_side_by_side(records[:1], tmp_path / "one.png", "caa_sycophancy") is None
    names = {p.name for p in plot_all(records, table(records, n_resamples=50), tmp_path / "o")}
    assert "methods_caa_sycophancy.png" in names


def test_side_effects_are_tabled_next_to_the_effect(tmp_path: Path) -> None:
    from sadi.report import side_effect_section

    run = write_run(
        tmp_path / "r",
        {"select": scores_pair(40, 0.5, 0.1, 0)},
        intervention="caa",
        component="residual",
        params={"layer": 15, "multiplier": 2.0},
        task="caa_refusal",
    )
    res = json.loads((run / "results.json").read_text())
    res["side_effects"] = {
        "mmlu": {
            "split": "report",
            "n_items": 500,
            "steered": {"acc": 0.31},
            "baseline": {"acc": 0.335},
        }
    }
    (run / "results.json").write_text(json.dumps(res))
    (rec,) = collect([run])
    ((title, md),) = side_effect_section([rec])
    assert title == "Side effects"
    assert "| caa_refusal | caa-residual | mmlu | report (500) | acc | 31.0 | 33.5 | -2.5 |" in md
    # with the per-item samples beside the run: the paired CI and exact McNemar p. Four
    # items: steered right on 0 and 1, unsteered on 1, 2 and 3: one item gained, two lost,
    # McNemar p = 2 * P(X <= 1 | n=3) = 1; delta (2 - 3) / 4 = -25.0
    res["side_effects"]["mmlu"] |= {
        "n_items": 4,
        "steered": {"acc": 0.5},
        "baseline": {"acc": 0.75},
    }
    (run / "results.json").write_text(json.dumps(res))
    for suffix, accs in (("", [1, 1, 0, 0]), ("_baseline", [0, 1, 1, 1])):
        rows = "".join(
            json.dumps({"id": f"m{i}", "acc": float(a)}) + "\n" for i, a in enumerate(accs)
        )
        (run / f"samples_side_mmlu_report{suffix}.jsonl").write_text(rows)
    ((_, md),) = side_effect_section(collect([run]))
    row = next(line for line in md.splitlines() if line.startswith("| caa_refusal |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3:7] == ["report (4)", "acc", "50.0", "75.0"]
    assert cells[7].startswith("-25.0 [") and cells[7].endswith("], p=1")
    assert (
        side_effect_section(
            collect([write_run(tmp_path / "plain", {"select": scores_pair(40, 0.5, 0.1, 0)})])
        )
        == []
    )


def test_answers_flag_a_steered_model_that_gives_one_answer(tmp_path: Path) -> None:
    """BoolQ-like: 10 items, 6 labelled yes. The unsteered model says no to 9 (acc 5/10:
    one yes right, four no right); the steered model says yes to all (acc 6/10, the constant
    rate): its gain is the answer prior, flagged; a steered model that answers like the
    labels is not flagged, and a task without predictions has no section."""
    from sadi.report import answer_section

    labels = [1] * 6 + [0] * 4
    unsteered = [1] + [0] * 9
    runs = {"prior": [1] * 10, "reads": labels[:8] + [1, 0]}
    conts = [" no", " yes"]
    records = []
    for name, pred in runs.items():
        run = write_run(tmp_path / name, {"report": ([0.0] * 10, [0.0] * 10)}, task="boolq")
        for suffix, preds in (("", pred), ("_baseline", unsteered)):
            rows = [
                {"id": f"b{i}", "label": y, "prediction": p, "acc": float(p == y)}
                | {"continuations": conts}
                for i, (y, p) in enumerate(zip(labels, preds, strict=True))
            ]
            text = "".join(json.dumps(r) + "\n" for r in rows)
            (run / f"samples_boolq_report{suffix}.jsonl").write_text(text)
        records += collect([run])
    ((title, md),) = answer_section(records)
    assert title == "Answers"
    lines = md.splitlines()
    # the "prior" run: constant 60% yes; unsteered 'no' 90%; steered 'yes' 100%, acc 60, flagged
    head = "| boolq | tiny | sadi-head | 60.0 ('yes') | 'no' 90% |"
    assert f"{head} 'yes' 100% | 60.0 | yes | n/a | n/a |" in lines  # no select scores
    # the "reads" run: 7 yes of 10 answers, acc 9/10, not flagged
    assert f"{head} 'yes' 70% | 90.0 |  | n/a | n/a |" in lines
    # COPA-like rows of build_dirs have no predictions: no section
    assert answer_section(collect(build_dirs(tmp_path / "runs"))) == []


def test_answer_form_measures_chosen_length_and_flatness(tmp_path: Path) -> None:
    """TruthfulQA-like: three items with their own answers. Unsteered, the model ranks the
    longest answer first with uniform scores (entropy 1); steered, it ranks the shortest
    first with p = (1/4, 3/4) on two answers and (1/2, 1/4, 1/4) on three. Chosen lengths
    (4, 2, 4) -> (1, 1, 1): mean 10/3 -> 1, difference -7/3. MC1: the labels are the
    shortest answers, so 'longest' scores 0 and 'shortest' 100, and a flat distribution
    (1/2 + 1/2 + 1/3) / 3. MC2 with `correct` ({0}, {1}, {1, 2}): the shortest answer is
    always true, the longest never, flat (1/2 + 1/2 + 2/3) / 3. 'steered - flat' pairs each
    item's metric with its flat value: MC1 acc 1 each, +5/9; MC2 mc2 0.5 each, -1/18. MC2
    samples that do not say which answers are true get 'n/a'. A task whose items share one
    answer set (yes / no) gets no row."""
    from sadi.report import answer_form_section

    conts = [[" a", " bbbb"], [" cc", " d"], [" eeee", " f", " gg"]]
    labels, correct = [0, 1, 1], [[0], [1], [1, 2]]
    base_ll = [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0, 0.0]]
    base_pred = [1, 0, 0]  # ties broken towards the longest here
    st_ll = [[math.log(3), 0.0], [0.0, math.log(3)], [math.log(2), 0.0, 0.0]]
    st_pred = [0, 1, 1]
    records = []
    for task, method in (
        ("truthfulqa_mc1", "sadi"),
        ("truthfulqa_mc2", "sadi"),
        ("truthfulqa_mc2", "iti"),
    ):
        run = write_run(
            tmp_path / f"{task}_{method}",
            {"report": ([0.0] * 3, [0.0] * 3)},
            task=task,
            intervention=method,
            metric="mc2" if task.endswith("mc2") else "acc",
        )
        for suffix, lls, preds in (("", st_ll, st_pred), ("_baseline", base_ll, base_pred)):
            rows = [
                {"id": f"q{i}", "continuations": c, "loglikelihoods": ll, "prediction": p}
                | {"label": y}
                | ({"acc": float(p == y)} if task.endswith("mc1") else {"mc2": 0.5})
                | ({"correct": t} if task.endswith("mc2") and method == "sadi" else {})
                for i, (c, ll, p, y, t) in enumerate(
                    zip(conts, lls, preds, labels, correct, strict=True)
                )
            ]
            text = "".join(json.dumps(r) + "\n" for r in rows)
            (run / f"samples_{task}_report{suffix}.jsonl").write_text(text)
        records += collect([run])
    ((title, md),) = answer_form_section(records)
    assert title == "Answer form"

    def h(p: list[float]) -> float:
        return -sum(q * math.log(q) for q in p) / math.log(len(p))

    h_st = (h([3 / 4, 1 / 4]) * 2 + h([1 / 2, 1 / 4, 1 / 4])) / 3
    rows = {
        tuple(c.strip() for c in line.split("|")[1:4:2]): line
        for line in md.splitlines()
        if "| truthfulqa" in line
    }
    assert len(rows) == 3
    for key, refs in (
        (("truthfulqa_mc1", "sadi-head"), [f"{100 * 4 / 9:.1f}", f"{100 * 5 / 9:+.1f} ["]),
        (("truthfulqa_mc2", "sadi-head"), [f"{100 * 5 / 9:.1f}", f"{-100 / 18:+.1f} ["]),
        (("truthfulqa_mc2", "iti-head"), ["n/a"] * 2),
    ):
        cells = [c.strip() for c in rows[key].strip("|").split("|")]
        assert cells[3:5] == [f"{10 / 3:.1f}", "1.0"]
        assert cells[5].startswith(f"{-7 / 3:+.1f} [")
        assert cells[6] == refs[0] and cells[7].startswith(refs[1])
        ends = ["0.0", "100.0"] if refs[0] != "n/a" else ["n/a", "n/a"]
        assert cells[8:12] == [*ends, "1.000", f"{h_st:.3f}"]
        assert cells[12].startswith(f"{h_st - 1:+.3f} [")
    # items sharing one answer set: the prior controls of "Answers" apply, no row here
    run = write_run(tmp_path / "boolq", {"report": ([0.0] * 3, [0.0] * 3)}, task="boolq")
    for suffix in ("", "_baseline"):
        rows_b = [
            {"id": f"b{i}", "continuations": [" no", " yes"], "loglikelihoods": [0.0, -1.0]}
            | {"prediction": 0, "label": 0, "acc": 1.0}
            for i in range(3)
        ]
        text = "".join(json.dumps(r) + "\n" for r in rows_b)
        (run / f"samples_boolq_report{suffix}.jsonl").write_text(text)
    assert answer_form_section(collect([run])) == []


def test_prior_offsets_find_the_best_answer_prior_shift() -> None:
    """Two answers, log-likelihoods (0, m): the labels say 'yes' iff m > -2, the model iff
    m > 0 (acc 4/6). The ties sit at -m; the midpoint 2.0 between 1.5 and 2.5 is the offset
    nearest 0 among the breakpoint midpoints that get all six right."""
    from sadi.report.stats import offset_accuracy, prior_offsets

    m = [-3.0, -2.5, -1.5, -1.0, 0.5, 1.0]
    ll, y = [[0.0, v] for v in m], [0, 0, 1, 1, 1, 1]
    assert offset_accuracy(ll, y, [0.0, 0.0]) == pytest.approx(4 / 6)
    off = prior_offsets(ll, y)
    assert off.tolist() == [0.0, 2.0]
    assert offset_accuracy(ll, y, off) == 1.0
    # three answers: the model always prefers answer 0 by 1; the labels are all answer 2
    assert (
        offset_accuracy([[1.0, 0.0, 0.0]] * 3, [2, 2, 2], prior_offsets([[1.0, 0, 0]] * 3, [2] * 3))
        == 1.0
    )


def test_answers_compare_steering_with_a_calibrated_unsteered_model(tmp_path: Path) -> None:
    """The select split fits the offset 2.0 (as above); on report the unsteered margins
    (-3, -1, 0.5, -2.6, -1.8, 2) shifted by 2 answer all six right (calibrated 100.0), the
    steered model five (83.3): steered - calibrated = -16.7, one discordant item, McNemar
    p = 1."""
    from sadi.report import answer_section

    conts = [" no", " yes"]
    run = write_run(tmp_path / "r", {"report": ([0.0] * 6, [0.0] * 6)}, task="boolq")

    def rows(margins: list[float], labels: list[int], preds: list[int]) -> str:
        return "".join(
            json.dumps(
                {"id": f"b{i}", "label": y, "prediction": p, "acc": float(p == y)}
                | {"continuations": conts, "loglikelihoods": [0.0, v]}
            )
            + "\n"
            for i, (v, y, p) in enumerate(zip(margins, labels, preds, strict=True))
        )

    sel_m, sel_y = [-3.0, -2.5, -1.5, -1.0, 0.5, 1.0], [0, 0, 1, 1, 1, 1]
    (run / "samples_boolq_select_baseline.jsonl").write_text(
        rows(sel_m, sel_y, [int(v > 0) for v in sel_m])
    )
    rep_m, rep_y = [-3.0, -1.0, 0.5, -2.6, -1.8, 2.0], [0, 1, 1, 0, 1, 1]
    base = [int(v > 0) for v in rep_m]
    (run / "samples_boolq_report_baseline.jsonl").write_text(rows(rep_m, rep_y, base))
    (run / "samples_boolq_report.jsonl").write_text(rows(rep_m, rep_y, [0, 1, 1, 1, 1, 1]))
    ((_, md),) = answer_section(collect([run]))
    row = next(line for line in md.splitlines() if line.startswith("| boolq |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[6:9] == ["83.3", "", "100.0"]
    assert cells[9].startswith("-16.7 [") and cells[9].endswith(", p=1")


LONG_TASK = "truthfulqa_mc2_with_a_long_descriptive_task_name"
LONG_MODEL = "smollm2_135m_instruct_with_a_rather_long_model_name"


def titles_inside(fig: Figure) -> list[str]:
    """Render `fig` with Agg and assert that each title (every axes title, the suptitle)
    lies whole inside the figure; return the titles' texts."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    titles = [ax.title for ax in fig.axes if ax.title.get_text()]
    titles += [t for t in fig.texts if t.get_text()]
    assert titles, "the figure has no title"
    for t in titles:
        box = t.get_window_extent(renderer)
        inside = box.x0 >= 0 and box.y0 >= 0 and box.x1 <= fig.bbox.x1 and box.y1 <= fig.bbox.y1
        assert inside, f"title {t.get_text()!r} at {box} outside the figure {fig.bbox}"
    return [t.get_text() for t in titles]


def words(caption: str, *names: str) -> None:
    """A caption is a sentence naming what it shows, never a file name."""
    assert " " in caption and not caption.endswith(".png") and "_0" not in caption
    for name in names:
        assert name in caption, f"{name!r} not in caption {caption!r}"


def test_the_delta_heatmap_reads_well() -> None:
    """Its title fits the figure whole, its caption says what it shows, and every value is
    legible on its cell (WCAG contrast >= 4.5: white on the dark ends of the scale, black in
    the middle)."""
    from sadi.report.heatmaps import contrast, delta_chart
    from sadi.report.stats import Estimate

    rows = [
        {"task": t, "method": m, "diff": Estimate(d, None, None), "p_value": 0.01}
        for t, m, d in (
            ("copa", "sadi-head", -0.4),
            ("copa", "iti-head", 0.02),
            ("boolq (ab)", "sadi-head", 0.4),
            ("boolq (ab)", "iti-head", -0.01),
        )
    ]
    chart = delta_chart("smollm2_135m_with_a_long_name", rows)
    fig = chart.figure
    titles_inside(fig)
    words(chart.caption, "smollm2_135m_with_a_long_name", "2 tasks", "p < 0.05")
    (ax,) = fig.axes[:1]
    image = ax.images[0]
    for text in ax.texts:
        x, y = text.get_position()
        cell = image.cmap(image.norm(image.get_array()[int(y), int(x)]))
        assert contrast(cell, text.get_color() == "white" and (1, 1, 1) or (0, 0, 0)) >= 4.5
    assert {t.get_color() for t in ax.texts} == {"white", "black"}


def long_sweeps(root: Path) -> list[RunRecord]:
    """A SADI sweep (strength x k) and a CAA sweep (multiplier) on a task of a long name."""
    grids = {
        "sadi": ("head", [{"k": k, "strength": s} for k in (2, 4) for s in (1.0, 5.0, 9.0)]),
        "caa": ("residual", [{"layer": 3, "multiplier": m} for m in (-1.0, 1.0, 2.0)]),
    }
    write_grids(root, grids, 60, task=LONG_TASK)
    return collect([root / "sadi", root / "caa"])


def test_every_figure_keeps_its_title_inside_and_says_what_it_shows(tmp_path: Path) -> None:
    """Long task and model names: each chart's title wraps to its figure's width, and its
    caption (saved inside the PNG, read back for the HTML and Markdown) is words naming the
    task and method, never a file name."""
    from sadi.report.figures import caption
    from sadi.report.heatmaps import heads_chart, plot_head_heatmap
    from sadi.report.plots import methods_chart, side_by_side_chart, strength_chart

    records = long_sweeps(tmp_path / "runs")
    sadi = next(r for r in records if r.intervention == "sadi")
    chart = strength_chart(sadi.points, sadi)
    assert chart is not None
    assert any(LONG_TASK in t.replace("\n", " ") for t in titles_inside(chart.figure))
    words(chart.caption, LONG_TASK, "sadi-head", "against strength", "one line per k")
    chart = side_by_side_chart(records, LONG_TASK)
    assert chart is not None
    assert len(titles_inside(chart.figure)) == 3  # a panel per method and the suptitle
    words(chart.caption, LONG_TASK, "sadi-head against strength", "caa-residual against multip")
    rows = table(collect(build_dirs(tmp_path / "bars")), n_resamples=50)
    chart = methods_chart(LONG_TASK, LONG_MODEL, rows)
    titles_inside(chart.figure)
    words(chart.caption, LONG_TASK, LONG_MODEL, "sadi-head", "95% bootstrap CI", "hatched")
    assert sadi.steerer_dir is not None
    about = f"{LONG_TASK}, sadi-head ({LONG_MODEL})"
    heads = heads_chart(sadi.steerer_dir, about)
    assert heads is not None
    titles_inside(heads.figure)
    words(heads.caption, about, "outlined")
    png = plot_head_heatmap(sadi.steerer_dir, tmp_path / "heads_x_0.png", about)
    assert png is not None and caption(png) == heads.caption


def test_no_single_cell_or_empty_drawing(tmp_path: Path) -> None:
    """A steerer of one head gets no heatmap, a sweep with no select value no strength plot,
    and a task with a single drawable sweep no side-by-side figure."""
    from safetensors.numpy import save_file as save_numpy

    from sadi.report.heatmaps import heads_chart
    from sadi.report.plots import side_by_side_chart, strength_chart

    one = tmp_path / "one_head"
    one.mkdir()
    delta = np.array([[0.3]], dtype=np.float32)
    save_numpy(
        {"delta": delta, "mask": np.ones((1, 1), dtype=bool)}, str(one / "steerer.safetensors")
    )
    meta = {"method": "sadi", "component": "head", "k": 1, "model_id": "tiny"}
    (one / "steerer.json").write_text(json.dumps(meta))
    assert heads_chart(one) is None
    records = long_sweeps(tmp_path / "runs")
    sadi = next(r for r in records if r.intervention == "sadi")
    for p in sadi.points:
        p.metrics["select"] = {}
    assert strength_chart(sadi.points, sadi) is None
    assert side_by_side_chart(records, LONG_TASK) is None  # CAA's alone is drawable


def test_the_paired_test_follows_the_metric_table(tmp_path: Path) -> None:
    """Whether a report delta gets McNemar reads `sadi.eval.metrics.METRICS[metric].binary`,
    not the values: p_label scores that happen to be 0/1 still get the paired bootstrap;
    a binary metric with a score that is not 0/1 is an error naming it."""
    from sadi.report.side_effects import side_metric

    pair = {"report": scores_pair(60, 0.5, 0.2, 0)}
    for metric, test in (("acc", "mcnemar"), ("p_label", "bootstrap")):
        run = write_run(tmp_path / metric, pair, metric=metric)
        (row,) = table(collect([run]), n_resamples=100)
        assert row["metric"] == metric and row["test"] == test
    with pytest.raises(ValueError, match=r"got 0.5: pass binary=False"):
        paired_test([1.0, 0.5], [0.0, 1.0], binary=True)
    assert paired_test([1.0, 0.0], [0.0, 0.0], binary=False).test == "bootstrap"
    # a side task is shown in the primary metric of the scoring its scores hold
    assert side_metric({"mc2": 0.4}) == "mc2"
    assert side_metric({"acc": 0.3, "acc_norm": 0.3, "acc_stderr": 0.01}) == "acc"
    assert side_metric({"bleu": 0.3}) is None


def test_html_cells_and_sections(dirs: list[Path]) -> None:
    """A value cell sets its number apart from its CI; text that merely opens with a number
    stays plain text; every section's table is sortable and listed in the page's links."""
    from sadi.report.blocks import Table
    from sadi.report.render import table_html

    t = Table("x", ["a", "b", "c"], [["+4.5 [+1.9, +7.2]", "1. " + "word " * 20, "-3.8*"]])
    got = table_html(t)
    ci = '<span class="ci"><span class="nw">[+1.9, +7.2]</span></span>'
    assert f'<td class="num"><span class="v">+4.5</span> {ci}</td>' in got
    assert '<td class="long">1. word' in got
    assert '<span class="v">-3.8</span><span class="ci">*</span>' in got
    rows = table(collect(dirs), n_resamples=50)
    page = to_html(rows, sections=[t])
    assert page.count('<table class="sortable">') == 3  # main, pivot, x
    assert '<a href="#report-deltas-method-x-task">' in page and '<a href="#x">' in page
