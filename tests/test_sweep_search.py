"""Search strategies and scale-out: Optuna's TPE sweeper and the Ray launcher."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

from tests.test_sweep import completed, sweep_command

TPE = [
    "hydra/sweeper=tpe",
    "intervention.strength=interval(1,10)",
    "intervention.variant=choice(dynamic,fixed)",
]


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=cwd)


@pytest.mark.slow
def test_optuna_trials_score_select_only_and_the_study_resumes(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    import optuna

    # sweep_command sets task.splits=[select]; drop it: the default (select and report)
    # must still give select-only trials
    cmd = [a for a in sweep_command(tiny_model_dir, tmp_path, *TPE) if a != "task.splits=[select]"]
    first = _run([*cmd, "hydra.sweeper.n_trials=2"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    # variant is no apply parameter of SADI: the run says each new value costs a fit
    assert "varies intervention.variant, which changes the fit: each new value costs a fit" in (
        first.stderr
    )
    storage = f"sqlite:///{tmp_path / 'sweep' / 'optuna.db'}"
    assert len(optuna.load_study(study_name="test", storage=storage).trials) == 2

    again = _run([*cmd, "hydra.sweeper.n_trials=1"], tmp_path)  # resumes the same study
    assert again.returncode == 0, again.stderr[-3000:]
    study = optuna.load_study(study_name="test", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3

    results = [json.loads(p.read_text()) for p in completed(tmp_path)]
    assert results and len(results) <= 3  # a repeated trial resolves to its completed point
    for r in results:
        assert r["scored_splits"] == ["select"]
        assert set(r["metrics"]) == set(r["baseline_metrics"]) == {"select"}
    assert not list((tmp_path / "sweep").glob("*/*report*"))
    # what Optuna maximised is each trial's select accuracy, nothing else
    select_accs = {r["metrics"]["select"]["acc"] for r in results}
    assert {t.value for t in study.trials} <= select_accs
    assert study.best_value == max(select_accs)


@pytest.mark.slow
def test_optuna_refuses_a_report_split_by_name(tiny_model_dir: Path, tmp_path: Path) -> None:
    cmd = sweep_command(tiny_model_dir, tmp_path, *TPE, "hydra.sweeper.n_trials=1")
    proc = _run([*cmd, "task.splits=[select,report]"], tmp_path)
    assert proc.returncode != 0
    assert "under the Optuna sweeper: its trials optimise the select split" in proc.stderr
    assert not completed(tmp_path)


@pytest.mark.ray
@pytest.mark.slow
def test_a_sweep_on_a_local_ray_instance(tiny_model_dir: Path, tmp_path: Path) -> None:
    if importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None:
        pytest.skip("the Ray launcher is an optional extra: pip install -e '.[ray]'")
    grid = ["hydra/launcher=ray_local", "intervention.k=3", "intervention.strength=2,4"]
    proc = _run(sweep_command(tiny_model_dir, tmp_path, *grid), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in completed(tmp_path)]
    assert sorted(r["config"]["intervention"]["strength"] for r in results) == [2.0, 4.0]
    # the points ran as Ray tasks and still shared one fit and the engine's scores
    assert all(r["sweep_engine"]["used"] for r in results)
    assert len({r["sweep_engine"]["directory"] for r in results}) == 1


def test_a_missing_optional_launcher_says_how_to_install_it() -> None:
    from sadi.run import check_overrides

    if importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is not None:
        pytest.skip("the Ray launcher is installed here: nothing is missing")
    from sadi.pipeline.validate import ConfigError

    with pytest.raises(ConfigError, match=r"ray_local needs the optional plugin .*'\.\[ray\]'"):
        check_overrides(["hydra/launcher=ray_local"])
