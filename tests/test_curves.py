"""Behaviour curves on synthetic curve sweeps: values, CIs, monotonicity, range, plots."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sadi.report.curves import build_curve, collect_curves, curve_table, main
from sadi.report.figures import caption
from sadi.report.records import load_run

N = 40


def curve_sweep(
    root: Path,
    method: str,
    param: str,
    strengths: list[float],
    value: Any,
    fixed: dict[str, Any] | None = None,
    task: str = "caa_refusal",
    split: str = "report",
    logit: Any = None,
) -> Path:
    """Run directories of one curve: per strength, p_label per item = value(strength, item);
    the baseline samples hold value(identity, item). With `logit`, each row also keeps the
    log-likelihoods [logit(strength, item), 0] of label 0."""
    identity = 1.0 if method == "sadi" else 0.0
    for s in strengths:
        d = root / f"{param}={s}"
        d.mkdir(parents=True)
        cfg = {
            "task": {"name": task, "primary_metric": "p_label", "format": "ab"},
            "model": {"name": "tiny"},
            "component": {"name": "residual"},
            "intervention": {"name": method, "_target_": "x", param: s, **(fixed or {})},
        }
        (d / "results.json").write_text(json.dumps({"config": cfg, "steered": True}))
        for suffix, at in (("", s), ("_baseline", identity)):
            rows = [{"id": f"i{i}", "p_label": value(at, i), "acc": 1.0} for i in range(N)]
            if logit is not None:
                for i, r in enumerate(rows):
                    r |= {"loglikelihoods": [logit(at, i), 0.0], "label": 0}
            text = "".join(json.dumps(r) + "\n" for r in rows)
            (d / f"samples_{task}_{split}{suffix}.jsonl").write_text(text)
    return root


def noise(i: int) -> float:
    return float(np.random.default_rng(i).uniform(-0.05, 0.05))


def test_an_increasing_curve(tmp_path: Path) -> None:
    strengths = [-2.0, -1.0, 1.0, 2.0, 4.0]
    sweep = curve_sweep(
        tmp_path / "caa",
        "caa",
        "multiplier",
        strengths,
        lambda m, i: 0.5 + 0.08 * m + noise(i),
        fixed={"layer": 12},
    )
    (curve,) = collect_curves([sweep])
    assert curve.param == "multiplier" and curve.fixed == {"layer": 12}
    assert curve.strengths == [-2.0, -1.0, 0.0, 1.0, 2.0, 4.0]  # the unsteered point added
    mean_noise = np.mean([noise(i) for i in range(N)])
    for s, v in zip(curve.strengths, curve.values, strict=True):
        assert v.value == pytest.approx(0.5 + 0.08 * s + mean_noise)
        assert v.lo is not None and v.hi is not None and v.lo <= v.value <= v.hi
    assert curve.baseline.value == pytest.approx(0.5 + mean_noise)
    assert curve.monotonic == "increasing" and curve.monotonic_share == 1.0
    assert curve.spearman == pytest.approx(1.0)
    assert curve.range.value == pytest.approx(0.08 * 6)
    # the shift is the same on every item: the resampled range has no spread
    assert curve.range.lo == pytest.approx(0.48) and curve.range.hi == pytest.approx(0.48)
    assert curve.toward.value == pytest.approx(0.32) and curve.away.value == pytest.approx(-0.16)
    assert "| caa_refusal | tiny | caa-residual | layer=12 | multiplier -2..4 (6) |" in (
        curve_table([curve])
    )


def test_a_noisy_flat_curve_is_not_monotonic(tmp_path: Path) -> None:
    def value(s: float, i: int) -> float:
        return 0.5 + (0.02 if (s in (1.0, 3.0)) else 0.0) + noise(i + int(s))

    sweep = curve_sweep(tmp_path / "sadi", "sadi", "strength", [0.0, 2.0, 3.0, 5.0], value)
    (curve,) = collect_curves([sweep])
    assert 1.0 in curve.strengths  # SADI's identity is strength 1
    assert curve.monotonic == "no" and curve.monotonic_share == 0.0
    lo, hi = curve.range.lo, curve.range.hi
    assert lo is not None and hi is not None and 0 <= lo < hi  # items vary per strength


def test_points_differing_in_more_than_the_strength_are_refused(tmp_path: Path) -> None:
    a = curve_sweep(tmp_path / "a", "caa", "multiplier", [1.0], lambda m, i: 0.5, {"layer": 3})
    b = curve_sweep(tmp_path / "b", "caa", "multiplier", [2.0], lambda m, i: 0.5, {"layer": 4})
    points = [load_run(next(a.iterdir())), load_run(next(b.iterdir()))]
    with pytest.raises(ValueError, match="more than multiplier"):
        build_curve(points)
    assert len(collect_curves([a, b])) == 2  # two curves, one per layer
    with pytest.raises(KeyError, match="no 'mc2'"):
        collect_curves([a], metric="mc2")


def test_cli_writes_the_table_json_and_one_plot_per_behaviour(tmp_path: Path) -> None:
    curve_sweep(tmp_path / "s" / "caa", "caa", "multiplier", [-1.0, 1.0], lambda m, i: 0.5 + m / 10)
    curve_sweep(tmp_path / "s" / "sas", "sas", "lam", [-4.0, 4.0], lambda m, i: 0.5 + m / 50)
    assert main([str(tmp_path / "s"), "--out", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    assert [p.name for p in out.glob("*.png")] == ["curve_caa_refusal_tiny.png"]
    data = json.loads((out / "curves.json").read_text())
    assert {d["method"] for d in data} == {"caa-residual", "sas-residual"}
    sas = next(d for d in data if d["method"] == "sas-residual")
    assert [p["strength"] for p in sas["points"]] == [-4.0, 0.0, 4.0]
    assert sas["monotonic"] == "increasing" and sas["identity"] == 0.0
    md = (out / "curves.md").read_text()
    assert "Behaviour curves" in md
    # the image's alt text is its caption in words, which the PNG holds, not its file name
    (alt,) = re.findall(r"!\[(.*)\]\(curve_caa_refusal_tiny.png\)", md)
    assert alt == caption(out / "curve_caa_refusal_tiny.png")
    assert "caa_refusal (tiny): report p_label against each method's relative strength" in alt
    assert "caa-residual, sas-residual" in alt and "curve_" not in alt


def test_the_curve_title_fits_its_figure(tmp_path: Path) -> None:
    """A long task and model name: the title wraps to the figure's width (Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from sadi.report.curves import curve_chart

    task = "caa_corrigible_neutral_hhh_with_a_long_descriptive_behaviour_name"
    sweep = curve_sweep(
        tmp_path / "caa", "caa", "multiplier", [-1.0, 1.0], lambda m, i: 0.5, task=task
    )
    curves = collect_curves([sweep])
    chart = curve_chart(task, "smollm2_135m_instruct_with_a_long_model_name", curves)
    canvas = FigureCanvasAgg(chart.figure)
    canvas.draw()
    (ax,) = chart.figure.axes
    box, fig = ax.title.get_window_extent(canvas.get_renderer()), chart.figure.bbox
    assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= fig.x1 and box.y1 <= fig.y1
    assert "\n" in ax.title.get_text() and task in chart.caption


def test_curves_are_not_overwritten_by_fewer(tmp_path: Path) -> None:
    curve_sweep(tmp_path / "s" / "caa", "caa", "multiplier", [-1.0, 1.0], lambda m, i: 0.5 + m / 10)
    curve_sweep(tmp_path / "s" / "sas", "sas", "lam", [-4.0, 4.0], lambda m, i: 0.5 + m / 50)
    out = tmp_path / "out"
    assert main([str(tmp_path / "s"), "--out", str(out)]) == 0
    before = (out / "curves.json").read_text()
    with pytest.raises(SystemExit, match="caa_refusal / tiny / sas-residual"):
        main([str(tmp_path / "s" / "caa"), "--out", str(out)])
    assert (out / "curves.json").read_text() == before
    assert main([str(tmp_path / "s" / "caa"), "--out", str(out), "--replace"]) == 0
    assert [d["method"] for d in json.loads((out / "curves.json").read_text())] == ["caa-residual"]


def test_a_sweep_that_scored_select_only_gives_select_curves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A sweep scores the select split only: the curves use it (and say so) instead of
    failing for want of report samples."""
    sweep = curve_sweep(
        tmp_path / "caa",
        "caa",
        "multiplier",
        [-1.0, 1.0],
        lambda m, i: 0.5 + 0.1 * m,
        split="select",
    )
    (curve,) = collect_curves([sweep])
    assert curve.split == "select" and curve.values[-1].value == pytest.approx(0.6)
    assert main([str(sweep), "--out", str(tmp_path / "out")]) == 0
    assert "curves of caa_refusal are on the select split" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="no report samples"):
        collect_curves([sweep], split="report")


def test_a_curve_counts_the_items_steered_the_wrong_way(tmp_path: Path) -> None:
    """A quarter of the items' logit difference falls with the multiplier: the curve's
    wrong-way share is 0.25, with a CI; without log-likelihoods there is none."""
    sweep = curve_sweep(
        tmp_path / "caa",
        "caa",
        "multiplier",
        [-1.0, 1.0, 2.0],
        lambda m, i: 0.5 + 0.05 * m,
        logit=lambda m, i: (-1.0 if i % 4 == 0 else 1.0) * m + i,
    )
    (curve,) = collect_curves([sweep])
    assert curve.wrong_way is not None and curve.wrong_way.value == pytest.approx(0.25)
    assert curve.wrong_way.lo is not None and curve.wrong_way.lo < 0.25 < (curve.wrong_way.hi or 0)
    assert "| 25.0 [" in curve_table([curve])
    plain = curve_sweep(tmp_path / "plain", "caa", "multiplier", [1.0, 2.0], lambda m, i: 0.5)
    assert collect_curves([plain])[0].wrong_way is None
