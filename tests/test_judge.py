"""The judge's parts on their own: rubric files and the score parser, the judgement store,
the judge-free scores, and the client's health check, retries and backoff against a small
HTTP server on 127.0.0.1 that rate-limits (a real socket, no patched client)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from sadi.judge.client import JudgeClient, JudgeError, JudgeSettings
from sadi.judge.judging import judge_rows
from sadi.judge.rubrics import RubricError, harmonic_mean, parse_score, rubric_set, score_names
from sadi.judge.store import JudgementStore
from sadi.judge.textstats import distinct_n, repeats_one_token, text_stats
from tests.conftest import byte_tokenizer

BEHAVIOURS = ["sycophancy", "hallucination", "refusal", "myopic_reward", "corrigible_neutral_hhh"]


@pytest.mark.parametrize("behaviour", BEHAVIOURS)
def test_every_caa_behaviour_has_its_rubric(behaviour: str) -> None:
    rs = rubric_set("caa", f"caa_{behaviour}")
    (r,) = rs.rubrics
    assert (r.low, r.high) == (0, 10) and "{question}" in r.template
    prompt = r.prompt("Q?", "A.")
    assert "Q?" in prompt and "A." in prompt


def test_axbench_rubrics_and_their_harmonic_mean() -> None:
    rs = rubric_set("axbench", "caa_refusal")
    assert [r.score for r in rs.rubrics] == ["concept", "instruction", "fluency"]
    assert rs.combined == "harmonic_mean" and len(rs.digest) == 16
    assert harmonic_mean([2.0, 2.0, 2.0]) == 2.0
    assert harmonic_mean([2.0, 0.0, 1.0]) == 0.0
    assert abs(harmonic_mean([1.0, 2.0, 2.0]) - 1.5) < 1e-12
    with pytest.raises(RubricError, match=r"choose one of \['axbench', 'caa'\]"):
        rubric_set("gpt4", "caa_refusal")
    assert score_names("axbench") == ["concept", "instruction", "fluency", "hmean"]
    assert score_names("caa") == [r.score for r in rubric_set("caa", "caa_refusal").rubrics]
    with pytest.raises(RubricError, match="no copa.txt"):
        rubric_set("caa", "copa")


@pytest.mark.parametrize(
    "text, score",
    [
        ("7", 7),
        ("Score: 10.", 10),
        (" 3/10", 3),
        ("0", 0),
        ("11", None),
        ("-1", None),
        ("7.5", None),
        ("seven", None),
        ("", None),
    ],
)
def test_parse_score(text: str, score: int | None) -> None:
    assert parse_score(text, 0, 10) == score


def test_text_stats() -> None:
    assert distinct_n([[1, 2, 3], [1, 2, 4]], 1) == 4 / 6
    assert distinct_n([[1, 2, 3], [1, 2, 4]], 2) == 3 / 4
    assert repeats_one_token([5, 5, 5, 5, 1]) and not repeats_one_token([5, 5, 5, 1, 5])
    stats = text_stats(byte_tokenizer(), ["aaaa aaaa", "hello"], [2.0, None])
    assert stats["n"] == 2 and stats["repeat_share"] == 0.5 and stats["perplexity"] == 2.0


class _Server:
    """A chat endpoint on 127.0.0.1 answering `answers` in turn; the first `limited` POSTs
    get HTTP 429 (Retry-After: 0)."""

    def __init__(self, answers: list[str], limited: int = 0) -> None:
        self.answers, self.limited, self.posts = list(answers), limited, 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(
                self, code: int, body: dict[str, Any], headers: dict[str, str] | None = None
            ) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                for k, v in {"Content-Length": str(len(data)), **(headers or {})}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._send(200, {"data": [{"id": "judge-model"}]})

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                outer.posts += 1
                if outer.posts <= outer.limited:
                    self._send(429, {"error": "slow down"}, {"Retry-After": "0"})
                    return
                text = outer.answers.pop(0) if outer.answers else "5"
                self._send(200, {"choices": [{"message": {"content": text}}]})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_client_retries_rate_limits_and_the_store_remembers(tmp_path: Path) -> None:
    server = _Server(["7", "no idea"], limited=2)
    try:
        waits: list[float] = []
        client = JudgeClient(
            JudgeSettings(server.url, "judge-model", max_concurrency=1, backoff_s=0.5),
            sleep=waits.append,
        )
        client.health()
        rows = [
            {"id": "a", "split": "select", "question": "Q1", "generation": "G1"},
            {"id": "b", "split": "report", "question": "Q2", "generation": "G2"},
        ]
        store = JudgementStore(tmp_path)
        judged = judge_rows(client, store, rubric_set("caa", "caa_refusal"), rows, progress=False)
        assert waits == [0.0, 0.0]  # the server's Retry-After, twice
        assert [r["scores"]["behaviour"] for r in judged.rows] == [7, None]
        assert judged.rows[1]["answers"]["behaviour"] == "no idea"  # kept, not dropped
        assert judged.summary("select")["behaviour"] == 7.0
        assert judged.summary()["behaviour_unparseable"] == 1
        posts = server.posts
        again = judge_rows(client, store, rubric_set("caa", "caa_refusal"), rows, progress=False)
        assert (again.asked, again.cached, server.posts) == (0, 2, posts)  # nothing asked twice
    finally:
        server.close()


def test_health_names_what_is_wrong(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = _Server([])
    try:
        with pytest.raises(JudgeError, match="'other' is not served.*judge-model"):
            JudgeClient(JudgeSettings(server.url, "other")).health()
        monkeypatch.delenv("SADI_TEST_KEY", raising=False)
        with pytest.raises(JudgeError, match="SADI_TEST_KEY=<your key>"):
            JudgeClient(
                JudgeSettings(server.url, "judge-model", api_key_env="SADI_TEST_KEY")
            ).health()
    finally:
        server.close()
    with pytest.raises(JudgeError, match="unreachable.*start the server"):
        JudgeClient(JudgeSettings(server.url, "judge-model", timeout_s=2)).health()
    with pytest.raises(JudgeError, match="give the endpoint's URL"):
        JudgeSettings("localhost:8000", "m")
