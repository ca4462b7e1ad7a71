"""`sadi serve` with vLLM underneath, over real HTTP: steered and unsteered requests side by
side (sent concurrently, so vLLM batches them with their own steerers), each the HF
backend's greedy generation under the same steerer."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import greedy_text, http_json, serving

pytestmark = pytest.mark.vllm


def _hf_greedy(hf: tuple[Any, Any], steerer: Any, prompt: str, n: int) -> str:
    return greedy_text(hf[0], hf[1], steerer, prompt, n)


def test_vllm_server_answers_steered_and_unsteered_side_by_side(
    hf: tuple[Any, Any], steerers: dict[str, Any], tmp_path: Path
) -> None:
    names = ["caa", "sadi_head", "iti"]
    args = ["--backend", "vllm", "--kv-cache-mb", "512"]
    for n in names:
        args += ["--steerer", f"{n}={steerers[n].save(tmp_path / n)}"]
    with serving(sys.executable, *args) as url:
        _, listed = http_json(url + "/v1/steerers")
        assert listed["backend"] == "vllm"
        assert sorted(s["name"] for s in listed["data"]) == sorted(names)
        prompt = "The most important thing in life is"
        bodies = [{"prompt": prompt, "max_tokens": 16}] + [
            {"prompt": prompt, "max_tokens": 16, "steerer": n} for n in names
        ]
        with ThreadPoolExecutor(len(bodies)) as pool:
            answers = list(pool.map(lambda b: http_json(url + "/v1/completions", b), bodies))
        for body, (status, answer) in zip(bodies, answers):
            assert status == 200, answer
            name = body.get("steerer")
            want = _hf_greedy(hf, None if name is None else steerers[name], prompt, 16)
            assert answer["choices"][0]["text"] == want, name
        assert len({a["choices"][0]["text"] for _, a in answers}) == len(bodies)
        status, chat = http_json(
            url + "/v1/chat/completions",
            {
                "messages": [{"role": "user", "content": "Hello!"}],
                "max_tokens": 8,
                "steerer": "caa",
            },
        )
        assert status == 200 and chat["choices"][0]["message"]["content"]
