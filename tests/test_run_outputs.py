"""Nothing a run computed is lost: results before the tracker, a run directory per run,
sweep points that never collide, resume keyed on the inputs' content, readable files."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import sadi.pipeline.tracking as tracking
import sadi.run as run_module
from sadi.data.tasks import EXAMPLE_DATA
from sadi.infra.cache import get_or_create
from sadi.infra.jsonio import write_json
from sadi.pipeline.results import generations_file, judgements_file, samples_file
from sadi.select import select
from tests.helpers import tiny_run
from tests.test_run import compose_run, tiny_overrides


class BrokenTracker:
    """A tracker that fails the way W&B does online without an API key."""

    def log(self, metrics: dict[str, float]) -> None:
        raise RuntimeError("api_key not configured (no-tty)")

    def log_artifact(self, path: Path, name: str, kind: str) -> None:
        raise RuntimeError("api_key not configured (no-tty)")

    def log_table(self, key: str, rows: list[dict[str, Any]]) -> None:
        pass

    def finish(self) -> None:
        pass


@pytest.mark.parametrize("strict", [False, True])
def test_a_tracker_failure_loses_no_results(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, strict: bool
) -> None:
    monkeypatch.setattr(tracking, "make_tracker", lambda *a, **k: BrokenTracker())
    out = tmp_path / "sweep" / "point"
    cfg = compose_run(
        tiny_overrides(tiny_model_dir, out, "task.splits=[select]", f"logger.strict={strict}")
    )
    if strict:
        with pytest.raises(tracking.TrackerError, match="api_key.*the results are written"):
            run_module.run(cfg)
    else:
        run_module.run(cfg)
    results = json.loads((out / "results.json").read_text())
    assert results["metrics"]["select"]["acc"] >= 0.0
    assert results["tracking"]["ok"] is False
    assert [f["what"] for f in results["tracking"]["failures"]] == ["the fit", "the run"]
    assert all("api_key" in f["error"] for f in results["tracking"]["failures"])
    # the select stage still sees the run
    monkeypatch.undo()
    chosen = select(tmp_path / "sweep", logger="none")
    assert chosen[0]["chosen"]["run_dir"] == str(out)


def _sadi_run(model_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sadi.run",
        *tiny_run(model_dir),
        *extra,
    ]


def test_two_runs_started_together_never_share_a_directory(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "SADI_CACHE_DIR": str(tmp_path / "cache")}
    procs = [
        subprocess.Popen(
            _sadi_run(tiny_model_dir, f"intervention.k={k}"),
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in (2, 3)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    done = sorted((tmp_path / "outputs" / "runs").glob("*/results.json"))
    assert len(done) == 2
    ks = {json.loads(p.read_text())["config"]["intervention"]["k"] for p in done}
    assert ks == {2, 3}
    # the last thing a run prints is where its results are, not buried under library chatter
    for stdout, stderr in outs:
        assert "already-initialized model" not in stdout + stderr  # lm-eval's, quieted
        assert "not a git repository" not in stderr  # lm-eval asks git; tmp_path is no checkout
        last = stdout.strip().splitlines()[-2:]
        assert last[0].startswith("results: ") and last[1].startswith("run directory: ")
        assert Path(last[0].removeprefix("results: ")).exists()


def test_a_sweep_over_data_paths_keeps_every_point(tiny_model_dir: Path, tmp_path: Path) -> None:
    """task.path is not in the directory name (a path), but points never collide, select
    keeps them apart, and a plain sweep scores the select split only."""
    rows = (EXAMPLE_DATA / "tiny_mc.jsonl").read_text().splitlines()
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("\n".join(rows) + "\n")
    b.write_text("\n".join(rows[::-1]) + "\n")  # other order: other carving, other splits
    cmd = _sadi_run(
        tiny_model_dir,
        f"task.path={a},{b}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    cmd.remove(f"task.path={EXAMPLE_DATA / 'tiny_mc.jsonl'}")
    cmd.insert(3, "-m")  # python -m sadi.run -m ...
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = sorted((tmp_path / "sweep").glob("*/results.json"))
    assert len(done) == 2
    results = [json.loads(p.read_text()) for p in done]
    assert {r["config"]["task"]["path"] for r in results} == {str(a), str(b)}
    assert all(r["scored_splits"] == ["select"] for r in results)
    assert all(set(r["metrics"]) == {"select"} for r in results)
    groups = select(tmp_path / "sweep", logger="none")
    assert len(groups) == 2 and len({g["group"] for g in groups}) == 2


def test_resume_recomputes_a_point_whose_data_changed(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data.jsonl"
    rows = (EXAMPLE_DATA / "tiny_mc.jsonl").read_text().splitlines()
    data.write_text("\n".join(rows) + "\n")
    out = tmp_path / "point"
    overrides = [
        o if not o.startswith("task.path=") else f"task.path={data}"
        for o in tiny_overrides(tiny_model_dir, out, "task.splits=[select]")
    ]
    caplog.set_level("INFO", logger="sadi")
    run_module.run(compose_run(overrides))
    first = json.loads((out / "results.json").read_text())
    caplog.clear()
    run_module.run(compose_run(overrides))
    assert "skipping completed point" in caplog.text
    # same path, other content: the point is not complete any more
    edited = [json.loads(r) for r in rows]
    edited[0]["question"] = edited[0]["question"] + " (edited)"
    data.write_text("".join(json.dumps(r) + "\n" for r in edited))
    caplog.clear()
    run_module.run(compose_run(overrides))
    printed = caplog.text
    assert "skipping" not in printed and "recomputing, its data or model weights changed" in printed
    second = json.loads((out / "results.json").read_text())
    assert second["inputs"]["data"] != first["inputs"]["data"]
    assert second["inputs"]["model"] == first["inputs"]["model"]
    kept = list(out.glob("results.superseded-*.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text())["inputs"] == first["inputs"]


def test_the_unsteered_scores_follow_the_weights_not_the_path(tmp_path: Path) -> None:
    """The baseline cache (shared by every point) is keyed on the weights fingerprint: new
    weights under the same path are scored anew, never served the old unsteered scores."""
    from tests.conftest import byte_tokenizer, make_tiny

    model_dir = tmp_path / "model"
    make_tiny("llama").save_pretrained(model_dir)
    byte_tokenizer().save_pretrained(model_dir)
    out = tmp_path / "point"
    overrides = tiny_overrides(model_dir, out, "task.splits=[select]")
    run_module.run(compose_run(overrides))
    first = json.loads((out / "results.json").read_text())
    make_tiny("llama", seed=3).save_pretrained(model_dir)  # other weights, same path
    run_module.run(compose_run(overrides))
    second = json.loads((out / "results.json").read_text())
    assert second["inputs"]["model"] != first["inputs"]["model"]
    lls = [
        [json.loads(r)["loglikelihoods"] for r in p.read_text().splitlines()]
        for p in sorted(out.glob("samples_*_select_baseline.jsonl"))
    ]
    kept = sorted(out.glob("results.superseded-*.json"))
    assert len(kept) == 1
    assert len(list((tmp_path / "cache" / "baselines").glob("*/key.json"))) == 2
    assert lls and lls[0]  # the second run's unsteered samples were written anew


def test_a_killed_fit_leaves_no_temporary_behind(tmp_path: Path) -> None:
    def crash(tmp: Path) -> None:
        (tmp / "half").write_text("x")
        raise KeyboardInterrupt  # as a kill mid-fit would leave it (no cleanup ran)

    root = tmp_path / "fits"
    with pytest.raises(KeyboardInterrupt):
        get_or_create(root, {"k": 1}, crash)
    # a SIGKILL skips the cleanup: simulate what it leaves
    from sadi.infra.cache import digest

    stale = root / f"{digest({'k': 1})}.abc123"
    stale.mkdir(parents=True)
    entry, hit = get_or_create(root, {"k": 1}, lambda tmp: (tmp / "v").write_text("1") and None)
    assert not hit and (entry / "v").read_text() == "1"
    assert sorted(p.name for p in root.iterdir()) == sorted([entry.name, f"{entry.name}.lock"])


def test_files_honour_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = write_json(tmp_path / "results.json", {"a": 1})
        entry, _ = get_or_create(
            tmp_path / "cache", {"k": 2}, lambda tmp: (tmp / "v").write_text("1") and None
        )
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(entry.stat().st_mode) == 0o755
    assert stat.S_IMODE((entry / "key.json").stat().st_mode) == 0o644


# ----- progress bars: labelled, and none at all with progress=false -----------------------
@pytest.mark.parametrize("progress", [True, False])
def test_every_progress_bar_is_labelled(
    tiny_model_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str], progress: bool
) -> None:
    import re

    from tests.test_run import compose_run, tiny_overrides

    out = tmp_path / "run"
    overrides = [o for o in tiny_overrides(tiny_model_dir, out) if not o.startswith("progress")]
    capfd.readouterr()
    run_module.run(compose_run([*overrides, f"progress={str(progress).lower()}"]))
    err = capfd.readouterr().err
    bars = [seg for seg in re.split(r"[\r\n]", err) if re.search(r"\d+%\|", seg)]
    if not progress:
        assert bars == []
        return
    assert bars, err  # the fit and the scoring show progress
    unlabelled = [b for b in bars if re.match(r"\s*\d+%\|", b)]
    assert unlabelled == []


@pytest.mark.slow
def test_a_run_cache_dir_does_not_convert_its_own_copy_of_the_embedded_model(
    tmp_path: Path,
) -> None:
    """The embedded model converts once, into the default cache, whatever paths.cache_dir."""
    from sadi.core.models import default_cache_dir
    from tests.test_run import compose_run

    out = tmp_path / "run"
    cfg = compose_run(
        [
            "intervention=none",
            "task.limit=2",
            "logger=none",
            "progress=false",
            f"paths.cache_dir={tmp_path}/cache",
            f"paths.output_dir='{out}'",
        ]
    )
    run_module.run(cfg)
    assert (out / "results.json").exists()
    assert not (tmp_path / "cache" / "models").exists()
    assert (default_cache_dir() / "models" / "smollm2-135m-instruct" / "config.json").exists()


def test_unsteered_engine_scores_are_kept_apart_per_dtype(tmp_path: Path) -> None:
    """A bfloat16 checkpoint loaded in bfloat16 and in float32 holds its weights exactly in
    both (one weights fingerprint), not their scores: the engine's unsteered chunks live in
    one folder per dtype."""
    import torch

    from tests.conftest import byte_tokenizer, make_tiny

    tiny_model_dir = tmp_path / "model"
    make_tiny("llama").to(torch.bfloat16).save_pretrained(tiny_model_dir)
    byte_tokenizer().save_pretrained(tiny_model_dir)
    directories = []
    for dtype in ("bfloat16", "float32"):
        out = tmp_path / dtype
        overrides = [
            f"paths.cache_dir={tmp_path / 'cache'}",
            *tiny_run(tiny_model_dir),
            "intervention=none",
            "sweep.engine=true",
            f"model.dtype={dtype}",
            "task.splits=[select]",
            f"paths.output_dir='{out}'",
        ]
        run_module.run(compose_run(overrides))
        results = json.loads((out / "results.json").read_text())
        assert results["sweep_engine"]["used"]
        directories.append(results["sweep_engine"]["directory"])
    assert directories[0] != directories[1]


def test_the_per_item_files_keep_their_documented_names() -> None:
    """Users' scripts read these names (README, sadi/run.py); writers and the report take
    them from one place."""
    assert samples_file("copa", "report") == "samples_copa_report.jsonl"
    assert samples_file("copa", "select", True) == "samples_copa_select_baseline.jsonl"
    assert samples_file("side_sst2", "report", True) == "samples_side_sst2_report_baseline.jsonl"
    assert generations_file("caa_refusal", True) == "generations_caa_refusal_baseline.jsonl"
    assert judgements_file("caa_refusal") == "judgements_caa_refusal.jsonl"
