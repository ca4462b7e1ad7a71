"""Judged generations end to end against a real OpenAI-compatible server: `sadi serve`
serving the embedded SmolLM2 on 127.0.0.1, started and stopped by the test. A 135M model is
a poor judge (most of its answers carry no score): this checks the pipeline, not the
verdicts: every generation of the scored splits judged or counted unparseable, answers
cached (a rerun asks nothing), W&B gets the judged rows as tables, a killed run resumes
without asking again, a sweep selects on the judged score and `sadi.select` judges the
chosen point's report split once, and a stopped server fails the run at once, naming the
fix."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sadi.pipeline.wandb_offline import read_offline_run
from tests.helpers import serving

pytestmark = pytest.mark.slow
JUDGE = "smollm2-135m-instruct"


def _cmd(url: str, out: Path, cache: Path, *extra: str, multirun: bool = False) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sadi.run",
        *(["-m"] if multirun else []),
        "task=caa_sycophancy",
        "task.open_ended=true",
        "task.limit=6",
        "task.n_pairs=8",
        "task.max_gen_toks=12",
        "intervention=caa",
        "intervention.layer=10",
        "judge=openai",
        f"judge.base_url={url}/v1",
        f"judge.model={JUDGE}",
        # SmolLM2 answers this rubric "0.15" or "0.5" (out of range: unparseable); its first
        # token alone is an integer in range, so every judged metric has a value here
        "judge.max_tokens=1",
        "logger=none",
        "progress=false",
        f"paths.cache_dir={cache}",
        f"hydra.{'sweep' if multirun else 'run'}.dir={out}",
        *extra,
    ]


def _run(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `cmd`; a single run's results.json ({} for a sweep)."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [a.split("=", 1)[1] for a in cmd if a.startswith("hydra.run.dir=")]
    return json.loads((Path(runs[0]) / "results.json").read_text()) if runs else {}


def _asked(results: dict[str, Any]) -> tuple[int, int]:
    conds = results["judged"]["conditions"].values()
    return sum(c["asked"] for c in conds), sum(c["cached"] for c in conds)


def test_judged_runs_against_a_real_server(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with serving(sys.executable, "--backend", "hf") as url:
        r2 = tmp_path / "r2"
        first = _run(_cmd(url, tmp_path / "r1", cache))
        judged = first["judged"]
        assert judged["judge"]["model"] == JUDGE and len(judged["judge"]["rubric_hash"]) == 16
        for condition in ("baseline", "steered"):
            rows = (tmp_path / "r1").glob("judgements_caa_sycophancy*.jsonl")
            assert rows
            for split in ("select", "report"):
                summary = judged["conditions"][condition][split]["judged"]
                parsed = summary["n"] - summary["behaviour_unparseable"]
                assert summary["n"] > 0 and 0 <= parsed <= summary["n"]
                text = judged["conditions"][condition][split]["text"]
                assert text["perplexity"] > 1 and 0 <= text["repeat_share"] <= 1
                if parsed:  # a judged metric only where an answer had a score
                    assert (
                        0
                        <= first["metrics" if condition == "steered" else "baseline_metrics"][
                            split
                        ]["judge_behaviour"]
                        <= 10
                    )
        lines = (tmp_path / "r1" / "judgements_caa_sycophancy.jsonl").read_text().splitlines()
        assert all("answers" in json.loads(line) for line in lines)  # raw answers kept
        asked, cached = _asked(first)
        assert asked > 0

        # the same judgements again (another run directory, logged to W&B offline): nothing
        # is asked twice, and W&B gets the judged rows as tables
        wandb_cmd = [a if a != "logger=none" else "logger=wandb" for a in _cmd(url, r2, cache)]
        home = tmp_path / "home"
        again = _run(wandb_cmd, env={**os.environ, "WANDB_MODE": "offline", "HOME": str(home)})
        assert _asked(again) == (0, asked + cached)
        (ev,) = [
            r
            for r in map(read_offline_run, sorted((r2 / "wandb").glob("offline-run-*")))
            if r.job_type == "eval"
        ]
        n_judged = {
            c: sum(1 for _ in (r2 / f"judgements_caa_sycophancy{s}.jsonl").open())
            for c, s in (("steered", ""), ("baseline", "_baseline"))
        }
        for condition, n in n_judged.items():
            key = f"samples/judged_{condition}"
            logged = [row for row in ev.history if row.get(f"{key}/_type") == "table-file"]
            assert [row[f"{key}/nrows"] for row in logged] == [n]

        # a run killed while judging resumes from the cache without asking again
        cache2 = tmp_path / "cache2"
        cmd = _cmd(url, tmp_path / "r3", cache2, "judge.max_concurrency=1")
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        store = cache2 / "judgements"
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and len(list(store.glob("*/*.json"))) < 2:
            assert proc.poll() is None, "the run ended before it was killed"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_before = len(list(store.glob("*/*.json")))
        assert done_before >= 2 and not (tmp_path / "r3" / "results.json").exists()
        resumed = _run(_cmd(url, tmp_path / "r3b", cache2))
        asked3, cached3 = _asked(resumed)
        assert cached3 >= done_before and asked3 + cached3 == asked + cached

        # a sweep selects on the judged score (select split only)
        sweep = tmp_path / "sweep"
        _run(
            _cmd(
                url,
                sweep,
                cache,
                "intervention.multiplier=0,4",
                "optimized_metric=select/judge_behaviour",
                multirun=True,
            )
        )
        points = sorted(sweep.glob("**/results.json"))
        assert len(points) == 2
        for p in points:
            r = json.loads(p.read_text())
            assert r["scored_splits"] == ["select"]
            assert set(r["judged"]["conditions"]["steered"]) >= {"select"}
            assert "report" not in r["judged"]["conditions"]["steered"]

        # sadi.select judges the chosen point's report split, once
        def select() -> dict[str, Any]:
            cmd = [sys.executable, "-m", "sadi.select", str(sweep), "--logger", "none"]
            proc = subprocess.run(
                [*cmd, "--set", f"judge.base_url={url}/v1"],
                capture_output=True,
                text=True,
                timeout=1200,
            )
            assert proc.returncode == 0, proc.stderr[-3000:]
            (selection,) = sweep.glob("selected/*/selection.json")
            report = json.loads((selection.parent / "report" / "results.json").read_text())
            return {"selection": json.loads(selection.read_text()), "report": report}

        chosen = select()
        report = chosen["report"]
        assert report["scored_splits"] == ["report"]
        for condition in ("baseline", "steered"):
            assert set(report["judged"]["conditions"][condition]) & {"select", "report"} == {
                "report"
            }
        rows = Path(chosen["selection"]["report_run_dir"]) / "judgements_caa_sycophancy.jsonl"
        assert {json.loads(line)["split"] for line in rows.read_text().splitlines()} == {"report"}
        assert chosen["selection"]["metric"] == "judge_behaviour"
        got = chosen["selection"]["report"]["metrics"]["judge_behaviour"]
        assert got == report["metrics"]["report"]["judge_behaviour"]
        # the report run's config is the chosen point's: asked again, the judge is not asked
        shutil.rmtree(sweep / "selected")
        assert _asked(select()["report"])[0] == 0

        # the judge check asks the same server about the hand-written answer pairs
        out = tmp_path / "check.json"
        cmd = [sys.executable, "-m", "sadi.judge.check", "--base-url", f"{url}/v1"]
        cmd += ["--model", JUDGE, "--max-tokens", "1", "--tasks", "caa_refusal"]
        cmd += ["--cache", str(cache), "--out", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        got = json.loads(out.read_text())["tasks"]["caa_refusal"]
        assert got["pairs"] == 3 and len(got["answers"]) == 6
        scored = got["ordered_right"] + got["ties"]
        assert got["accuracy"] is None or 0 <= got["accuracy"] <= 1 and scored <= 3
        assert "caa_refusal: " in proc.stdout and "(0.5: chance)" in proc.stdout

    # the server is gone: the run fails before generating anything, naming the fix
    t = time.monotonic()
    proc = subprocess.run(
        _cmd(url, tmp_path / "down", cache), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 2
    assert "unreachable" in proc.stderr and "start the server" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "down").glob("generations_*"))
    assert time.monotonic() - t < 120
