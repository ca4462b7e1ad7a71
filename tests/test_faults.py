"""Faults that must not stick: damaged results and cache files, failed sweep points, a full
disk, user mistakes (one line, no traceback) and Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sadi.data.tasks import EXAMPLE_DATA
from sadi.infra.errors import DiskFullError, writing
from sadi.infra.jsonio import DamagedFileError
from sadi.run import run
from sadi.select import select
from tests.test_run import compose_run, tiny_overrides

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def truncate(path: Path) -> None:
    text = path.read_text()
    path.write_text(text[: len(text) // 2])


def sadi(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=ENV
    )


def lls(run_dir: Path, name: str = "samples_jsonl_select.jsonl") -> list[list[float]]:
    return [json.loads(r)["loglikelihoods"] for r in (run_dir / name).read_text().splitlines()]


# ----- damaged result files: named, with the fix ------------------------------------------
def test_a_damaged_results_json_is_named_by_select_and_report(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    for strength in (2.0, 4.0):
        out = sweep / f"intervention.strength={strength}"
        run(compose_run(tiny_overrides(tiny_model_dir, out, f"intervention.strength={strength}")))
    damaged = sweep / "intervention.strength=4.0" / "results.json"
    truncate(damaged)
    with pytest.raises(DamagedFileError, match="rerun the command that wrote it") as info:
        select(sweep, logger="none")
    assert str(damaged) in str(info.value)
    proc = sadi("-m", "sadi.report", str(sweep), "--out", str(tmp_path / "report"))
    assert proc.returncode == 2
    assert str(damaged) in proc.stderr and "Traceback" not in proc.stderr


def test_a_point_whose_results_json_is_damaged_is_recomputed(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    cfg = tiny_overrides(tiny_model_dir, out)
    run(compose_run(cfg))
    first = json.loads((out / "results.json").read_text())
    truncate(out / "results.json")
    run(compose_run(cfg))
    assert json.loads((out / "results.json").read_text())["metrics"] == first["metrics"]
    assert len(list(out.glob("results.damaged-*.json"))) == 1  # kept, not deleted


# ----- damaged cache entries: a miss, moved aside, said once ------------------------------
def test_damaged_fit_and_baseline_entries_are_recomputed(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    first = tmp_path / "a"
    run(compose_run(tiny_overrides(tiny_model_dir, first)))
    (fit,) = [p for p in (cache / "fits").iterdir() if p.is_dir()]
    truncate(fit / "steerer.json")
    for entry in (p for p in (cache / "baselines").iterdir() if p.is_dir()):
        truncate(entry / "metrics.json")
    caplog.clear()
    second = tmp_path / "b"
    run(compose_run(tiny_overrides(tiny_model_dir, second)))
    results = json.loads((second / "results.json").read_text())
    assert results["timings"]["fit_cache_hit"] == 0.0  # the damaged fit was a miss
    assert results["metrics"] == json.loads((first / "results.json").read_text())["metrics"]
    assert lls(second) == lls(first)
    assert len(list((cache / "fits").glob("damaged-*"))) == 1
    assert len(list((cache / "baselines").glob("damaged-*"))) == 2  # select and report
    said = [r.getMessage() for r in caplog.records if "could not be read" in r.getMessage()]
    assert len(said) == 3 and all("moved aside" in m for m in said)


def test_a_damaged_engine_chunk_or_plan_is_recomputed(tiny_model_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    engine = "sweep.engine=true"
    first = tmp_path / "a"
    run(compose_run(tiny_overrides(tiny_model_dir, first, engine)))
    chunks = sorted((cache / "sweeps").rglob("chunk_0.json"))
    assert chunks
    truncate(chunks[0])
    second = tmp_path / "b"
    run(compose_run(tiny_overrides(tiny_model_dir, second, engine)))
    assert lls(second) == lls(first)
    assert list(chunks[0].parent.glob("damaged-chunk_0.json-*"))
    # a damaged plan: its folder's chunks belong to it, so the folder starts again
    plan = sorted((cache / "sweeps").rglob("plan.json"))[0]
    truncate(plan)
    third = tmp_path / "c"
    run(compose_run(tiny_overrides(tiny_model_dir, third, engine)))
    assert lls(third) == lls(first)
    (aside,) = plan.parent.parent.glob(f"damaged-{plan.parent.name}-*")
    # the folder's lock lies beside it, so the lock a waiting job holds is the one it moved
    assert not list(aside.glob(".lock*"))
    assert (plan.parent.parent / f"{plan.parent.name}.lock").exists()


# ----- a multirun tries every point and lists the failures --------------------------------
def test_a_sweep_ends_with_every_failed_point_and_why(tiny_model_dir: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    overrides = [o for o in tiny_overrides(tiny_model_dir, tmp_path / "x") if "output_dir" not in o]
    proc = sadi(
        "-m",
        "sadi.run",
        "-m",
        *[o for o in overrides if not o.startswith("intervention.k")],
        "intervention.k=3,5000,6000",
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "2 point(s) of this sweep failed" in proc.stderr
    for k in (5000, 6000):
        assert f"intervention.k={k}" in proc.stderr and f"k={k} exceeds" in proc.stderr
    (ok,) = [p for p in sweep.iterdir() if p.name.startswith("intervention.k=3,")]
    assert (ok / "results.json").exists() and not (ok / "failed.json").exists()
    failed = json.loads(next(sweep.glob("intervention.k=5000,*/failed.json")).read_text())
    assert failed["user_error"] and "Traceback" in failed["traceback"]


# ----- a full disk names the path -----------------------------------------------------------
@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_full_disk_names_the_path_being_written() -> None:
    """/dev/full fails every write with ENOSPC: a real full-disk error, named."""
    with pytest.raises(DiskFullError, match=r"no space left writing /runs/x/results.json"):
        with writing(Path("/runs/x/results.json")), open("/dev/full", "w") as f:
            f.write("x" * 100_000)


# ----- user mistakes: one line and the fix, exit 2; verbose=true for the traceback ---------
def _bad_label_file(tmp_path: Path) -> Path:
    rows = (EXAMPLE_DATA / "tiny_mc.jsonl").read_text().splitlines()
    bad = json.loads(rows[4])
    bad["label"] = "0"
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([*rows[:4], json.dumps(bad), *rows[5:]]) + "\n")
    return path


@pytest.mark.parametrize(
    "case, extra, says",
    [
        ("config", ["intervention.k=0"], "k must be a positive integer"),
        ("data", ["task.path={bad}"], "must be an integer index into choices"),
        ("model", ["model.source={tmp}/no-such-model"], "could not be loaded"),
        # the SAE is checked before the (missing) model would be loaded
        (
            "sae",
            [
                "intervention=sas",
                "component=residual",
                "intervention.sae={tmp}/no-such-sae",
                "model.source={tmp}/no-such-model",
            ],
            "no cfg.json there",
        ),
    ],
)
def test_a_user_mistake_prints_one_line_and_the_fix(
    tiny_model_dir: Path, tmp_path: Path, case: str, extra: list[str], says: str
) -> None:
    bad = _bad_label_file(tmp_path)
    given = [e.format(bad=bad, tmp=tmp_path) for e in extra]
    keys = {e.split("=")[0] for e in given}
    base = [
        o
        for o in tiny_overrides(tiny_model_dir, tmp_path / "run")
        if o.split("=")[0] not in keys and not (case == "sae" and o.startswith("intervention."))
    ]
    proc = sadi("-m", "sadi.run", *base, *given)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr and len(lines) <= 2, proc.stderr
    assert lines[-1].startswith("sadi.run: error:") and says in lines[-1]
    verbose = sadi("-m", "sadi.run", *base, *given, "verbose=true")
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr


@pytest.mark.slow  # SmolLM2's fit: long enough to interrupt
def test_ctrl_c_during_a_fit_prints_one_line(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sadi.run",
            "task.limit=4",
            "logger=none",
            f"paths.cache_dir={tmp_path}/cache",
            f"hydra.run.dir={tmp_path}/run",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=ENV,
    )
    seen: list[str] = []
    fitting = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for chunk in iter(lambda: proc.stderr.read(200), ""):  # type: ignore[union-attr]
            seen.append(chunk)
            if "SADI fit" in "".join(seen[-3:]):
                fitting.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert fitting.wait(timeout=300), "".join(seen)[-2000:]
    # at once: on a loaded machine the fit's progress bar can reach this reader late, and a
    # short run (task.limit=4) may finish soon after its fit
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    reader.join(timeout=10)
    err = "".join(seen)
    assert "Traceback" not in err and "interrupted" in err
    assert "rerun the same command" in err
