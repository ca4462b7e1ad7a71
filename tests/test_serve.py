"""`sadi serve` over real HTTP on a tiny model (HF backend): steerers by name from saved
directories, chosen per request (body or model id), two concurrent requests under
different steerers, the lists, and the refusals; bound to 127.0.0.1 by default."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from sadi.serve.generators import cut_at_stop
from sadi.steerers.caa import CAA
from sadi.steerers.sadi import SADI
from tests.conftest import PAIRS
from tests.helpers import greedy_text, http_json, serving


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    root = tmp_path_factory.mktemp("steerers")
    steerers = {
        "caa": CAA(layer=1, multiplier=30.0, progress=False).fit(model, tok, PAIRS),
        "sadi": SADI(k=8, strength=40.0, progress=False).fit(model, tok, PAIRS),
    }
    dirs = {n: st.save(root / n) for n, st in steerers.items()}
    return {"model": model, "tok": tok, "steerers": steerers, "dirs": dirs}


def _expected(served: dict[str, Any], prompt: str, steerer: str | None, n: int) -> str:
    st = None if steerer is None else served["steerers"][steerer]
    return greedy_text(served["model"], served["tok"], st, prompt, n)


def test_serve_steers_per_request_over_http(served: dict[str, Any], tiny_model_dir: Path) -> None:
    args = ["--model", str(tiny_model_dir), "--backend", "hf"]
    for name, d in served["dirs"].items():
        args += ["--steerer", f"{name}={d}"]
    with serving(sys.executable, *args) as url:
        assert url.startswith("http://127.0.0.1:")  # loopback unless told otherwise
        status, health = http_json(url + "/health")
        assert status == 200 and health == {"status": "ok"}
        _, listed = http_json(url + "/v1/steerers")
        assert {s["name"]: s["method"] for s in listed["data"]} == {"caa": "caa", "sadi": "sadi"}
        assert listed["backend"] == "hf"
        _, models = http_json(url + "/v1/models")
        model_id = models["data"][0]["id"]
        assert {m["id"] for m in models["data"]} == {
            model_id,
            f"{model_id}:caa",
            f"{model_id}:sadi",
        }

        prompt = "Q: is the sky blue?"
        bodies: list[dict[str, Any]] = [
            {"prompt": prompt, "max_tokens": 12},
            {"prompt": prompt, "max_tokens": 12, "steerer": "caa"},
            {"prompt": prompt, "max_tokens": 12, "model": f"{model_id}:sadi"},
        ]
        # sent concurrently: different steerers in flight at once
        with ThreadPoolExecutor(len(bodies)) as pool:
            answers = list(pool.map(lambda b: http_json(url + "/v1/completions", b), bodies))
        texts = {}
        for body, (status, answer) in zip(bodies, answers):
            assert status == 200, answer
            name = body.get("steerer") or (body.get("model", "").partition(":")[2] or None)
            assert answer["steerer"] == name
            assert answer["choices"][0]["text"] == _expected(served, prompt, name, 12)
            assert answer["usage"]["completion_tokens"] <= 12
            texts[name] = answer["choices"][0]["text"]
        assert len(set(texts.values())) == 3  # steering changed the generations

        status, err = http_json(url + "/v1/completions", {"prompt": prompt, "steerer": "nope"})
        assert status == 400 and "'nope' is not loaded" in err["error"]["message"]
        status, err = http_json(url + "/v1/completions", {"prompt": prompt, "stream": True})
        assert status == 400 and "stream" in err["error"]["message"]
        status, err = http_json(url + "/v1/completions", {"prompt": prompt, "max_tokens": -1})
        assert status == 400 and "max_tokens" in err["error"]["message"]
        status, err = http_json(url + "/v1/load", {"path": "/etc/passwd"})
        assert status == 404  # nothing loads files or code at run time


def test_serve_refuses_a_directory_without_a_steerer(tmp_path: Path, tiny_model_dir: Path) -> None:
    import subprocess

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sadi.serve",
            "--model",
            str(tiny_model_dir),
            "--steerer",
            f"x={tmp_path}",
            "--backend",
            "hf",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "holds no steerer" in proc.stderr and "Traceback" not in proc.stderr


def test_cut_at_stop() -> None:
    assert cut_at_stop("a, b. c", [".", ","]) == ("a", True)
    assert cut_at_stop("abc", ["x"]) == ("abc", False)
