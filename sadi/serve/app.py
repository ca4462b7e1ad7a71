"""The HTTP side of `sadi serve`: OpenAI's completions and chat completions, the model and
steerer lists, health; requests that arrive together are generated as one batch.

A request picks its steerer with `"steerer": NAME` in the body (the OpenAI client's
`extra_body`), or with the model id `<model>:<steerer>`; without one it is unsteered. Only
the steerers named at start can be used: nothing in a request loads a file or runs code.

Endpoints: `GET /health`, `GET /v1/models`, `GET /v1/steerers`, `POST /v1/completions`,
`POST /v1/chat/completions` (no streaming: `stream: true` is refused).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from sadi.serve.generators import Completion, Generation, Generator

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20  # bytes of one request body
MAX_TOKENS = 4096  # the most tokens one request may ask for


class BadRequest(ValueError):
    """A request the server refuses (400), with the reason."""


@dataclass
class ServedModel:
    """What the server answers with."""

    name: str  # the model id clients send
    generator: Generator
    tokenizer: PreTrainedTokenizerBase
    steerers: dict[str, dict[str, Any]]  # name -> method, component, params, run dir
    max_batch: int = 32


class Batcher:
    """One thread runs the generator; requests queued while it is busy form its next batch."""

    def __init__(self, served: ServedModel) -> None:
        self.served = served
        self.queue: queue.Queue[tuple[Generation, Future[Completion]]] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="sadi-serve-batcher", daemon=True)
        self.thread.start()

    def submit(self, generation: Generation) -> Completion:
        future: Future[Completion] = Future()
        self.queue.put((generation, future))
        return future.result()

    def _run(self) -> None:
        while True:
            batch = [self.queue.get()]
            time.sleep(0.005)  # let requests sent together arrive together
            while len(batch) < self.served.max_batch:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            try:
                results = self.served.generator.generate([g for g, _ in batch])
            except Exception as err:  # reported to each waiting request, the server goes on
                log.exception("generation failed")
                for _, f in batch:
                    f.set_exception(err)
                continue
            for (_, f), r in zip(batch, results):
                f.set_result(r)


def _number(body: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise BadRequest(f"{key}={value!r}: give a number in [{lo}, {hi}]")
    return float(value)


class API:
    """Turns request bodies into generations and completions into OpenAI responses."""

    def __init__(self, served: ServedModel) -> None:
        self.served = served
        self.batcher = Batcher(served)

    def steerer_of(self, body: dict[str, Any]) -> str | None:
        model = str(body.get("model") or self.served.name)
        name = body.get("steerer")
        base, _, suffix = model.partition(":")
        if base != self.served.name:
            raise BadRequest(
                f"model {model!r} is not served; this server serves {self.served.name!r}"
            )
        if suffix and name is not None and suffix != name:
            raise BadRequest(f"model {model!r} and steerer {name!r} name two steerers")
        name = name if name is not None else (suffix or None)
        if name is not None and name not in self.served.steerers:
            raise BadRequest(
                f"steerer {name!r} is not loaded; loaded: {sorted(self.served.steerers)} "
                "(GET /v1/steerers); steerers are chosen when the server starts"
            )
        return name

    def generation(self, body: dict[str, Any], tokens: list[int]) -> Generation:
        if body.get("stream"):
            raise BadRequest("stream=true is not supported; ask without streaming")
        if int(body.get("n", 1) or 1) != 1:
            raise BadRequest("n must be 1")
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        if not all(isinstance(s, str) for s in stop):
            raise BadRequest(f"stop={stop!r}: give a string or a list of strings")
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise BadRequest(f"seed={seed!r}: give an integer")
        return Generation(
            tokens=tokens,
            steerer=self.steerer_of(body),
            max_tokens=int(_number(body, "max_tokens", 64, 1, MAX_TOKENS)),
            temperature=_number(body, "temperature", 0.0, 0.0, 10.0),
            top_p=_number(body, "top_p", 1.0, 1e-6, 1.0),
            seed=seed,
            stop=tuple(stop),
        )

    def _answer(
        self, body: dict[str, Any], tokens: list[int], kind: str, prefix: str
    ) -> dict[str, Any]:
        """Generate for `tokens` and wrap the completion as OpenAI's `kind` object."""
        g = self.generation(body, tokens)
        c = self.batcher.submit(g)
        choice: dict[str, Any] = {"index": 0, "finish_reason": c.finish_reason}
        if kind == "chat.completion":
            choice["message"] = {"role": "assistant", "content": c.text}
        else:
            choice.update(text=c.text, logprobs=None)
        n_in, n_out = len(g.tokens), len(c.tokens)
        return {
            "id": f"{prefix}-{uuid.uuid4().hex}",
            "object": kind,
            "created": int(time.time()),
            "model": self.served.name if g.steerer is None else f"{self.served.name}:{g.steerer}",
            "steerer": g.steerer,
            "choices": [choice],
            "usage": {
                "prompt_tokens": n_in,
                "completion_tokens": n_out,
                "total_tokens": n_in + n_out,
            },
        }

    def completions(self, body: dict[str, Any]) -> dict[str, Any]:
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise BadRequest("prompt must be a non-empty string")
        tokens = list(self.served.tokenizer(prompt)["input_ids"])
        return self._answer(body, tokens, "text_completion", "cmpl")

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body.get("messages")
        if (
            not isinstance(messages, list)
            or not messages
            or not all(
                isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role")
                for m in messages
            )
        ):
            raise BadRequest("messages must be a non-empty list of {role, content} objects")
        tok = self.served.tokenizer
        if not getattr(tok, "chat_template", None):
            raise BadRequest("this model has no chat template; use /v1/completions")
        text = tok.apply_chat_template(
            [{"role": m["role"], "content": m["content"]} for m in messages],
            tokenize=False,
            add_generation_prompt=True,
        )
        tokens = list(tok(text, add_special_tokens=False)["input_ids"])
        return self._answer(body, tokens, "chat.completion", "chatcmpl")

    def models(self) -> dict[str, Any]:
        ids = [self.served.name, *(f"{self.served.name}:{s}" for s in self.served.steerers)]
        return {
            "object": "list",
            "data": [{"id": i, "object": "model", "owned_by": "sadi"} for i in ids],
        }

    def steerers(self) -> dict[str, Any]:
        return {
            "object": "list",
            "backend": self.served.generator.backend,
            "data": [{"name": n, **info} for n, info in self.served.steerers.items()],
        }


def make_handler(api: API) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            log.info("%s %s", self.address_string(), format % args)

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: HTTPStatus, message: str) -> None:
            self._send(
                status, {"error": {"message": message, "type": status.phrase, "code": status}}
            )

        def do_GET(self) -> None:
            routes = {
                "/health": lambda: {"status": "ok"},
                "/v1/models": api.models,
                "/v1/steerers": api.steerers,
            }
            route = routes.get(self.path.split("?")[0].rstrip("/") or "/")
            if route is None:
                self._error(HTTPStatus.NOT_FOUND, f"no endpoint GET {self.path}")
            else:
                self._send(HTTPStatus.OK, route())

        def do_POST(self) -> None:
            routes = {"/v1/completions": api.completions, "/v1/chat/completions": api.chat}
            route = routes.get(self.path.split("?")[0].rstrip("/"))
            if route is None:
                self._error(HTTPStatus.NOT_FOUND, f"no endpoint POST {self.path}")
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY} bytes")
                return
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
                if not isinstance(body, dict):
                    raise BadRequest("the body must be a JSON object")
                self._send(HTTPStatus.OK, route(body))
            except (BadRequest, json.JSONDecodeError) as err:
                self._error(HTTPStatus.BAD_REQUEST, str(err))
            except Exception as err:  # the server stays up; the client learns what failed
                log.exception("request failed")
                self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(err).__name__}: {err}")

    return Handler


def make_server(
    served: ServedModel, host: str = "127.0.0.1", port: int = 8000
) -> ThreadingHTTPServer:
    """The server (not started: call `serve_forever`); port 0 picks a free one."""
    server = ThreadingHTTPServer((host, port), make_handler(API(served)))
    server.daemon_threads = True
    return server


__all__ = ["API", "BadRequest", "Batcher", "ServedModel", "make_server"]
