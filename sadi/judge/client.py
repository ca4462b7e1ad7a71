"""A client of any OpenAI-compatible chat endpoint (a hosted API, `vllm serve`, llama.cpp's
`llama-server`, SGLang, `sadi serve`): one health request before any work, temperature 0,
timeouts, retries with exponential backoff on rate limits, server errors and dropped
connections, bounded concurrency. Standard library only; the API key comes from an
environment variable named in the config and is never logged or written."""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from sadi.infra.errors import UserError

log = logging.getLogger(__name__)
T = TypeVar("T")
RETRIED_STATUS = (408, 409, 425, 429, 500, 502, 503, 504)


class JudgeError(UserError):
    """The judge endpoint is unreachable, refuses the requests or answers nonsense."""


@dataclass(frozen=True)
class JudgeSettings:
    """Where the judge is and how to ask it (`judge.*` in a run's config)."""

    base_url: str  # e.g. http://127.0.0.1:8000/v1
    model: str
    api_key_env: str | None = None  # the environment variable holding the key (None: no key)
    max_concurrency: int = 4
    timeout_s: float = 60.0
    retries: int = 4
    backoff_s: float = 1.0
    max_tokens: int = 16
    temperature: float = 0.0

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise JudgeError(
                f"judge.base_url={self.base_url!r}: give the endpoint's URL, e.g. "
                "http://127.0.0.1:8000/v1"
            )
        if not self.model:
            raise JudgeError("judge.model is empty: name the model the endpoint serves")
        if self.max_concurrency < 1 or self.retries < 0 or self.timeout_s <= 0:
            raise JudgeError(
                f"judge.max_concurrency={self.max_concurrency} (>= 1), judge.retries="
                f"{self.retries} (>= 0), judge.timeout_s={self.timeout_s} (> 0)"
            )


class JudgeClient:
    """Chat completions of one judge model."""

    def __init__(self, settings: JudgeSettings, sleep: Callable[[float], None] = time.sleep):
        self.settings = settings
        self.url = settings.base_url.rstrip("/")
        self.sleep = sleep
        self.requests = 0  # chat requests sent (retries included)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        env = self.settings.api_key_env
        if env:
            key = os.environ.get(env)
            if not key:
                raise JudgeError(
                    f"judge.api_key_env={env!r} but that environment variable is not set; "
                    f"export {env}=<your key> (the key is never read from the config)"
                )
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _call(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path, data=data, headers=self._headers(), method=method
        )
        with urllib.request.urlopen(req, timeout=self.settings.timeout_s) as resp:
            return json.loads(resp.read())

    def health(self) -> None:
        """One request before any work: the endpoint answers and serves `model`; raises
        JudgeError naming what is wrong and the fix."""
        try:
            listed = self._call("GET", "/models", None)
        except urllib.error.HTTPError as err:
            raise JudgeError(
                f"the judge endpoint {self.url} answered GET /models with HTTP {err.code}; "
                "check judge.base_url (it ends in /v1) and the API key"
            ) from err
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise JudgeError(
                f"the judge endpoint {self.url} is unreachable ({reason}); start the server "
                "(e.g. `sadi serve` or `vllm serve`) or fix judge.base_url"
            ) from err
        ids = [m.get("id") for m in listed.get("data", []) if isinstance(m, dict)]
        if ids and self.settings.model not in ids:
            raise JudgeError(
                f"judge.model={self.settings.model!r} is not served at {self.url}; it serves {ids}"
            )

    def chat(self, prompt: str) -> str:
        """The judge's answer to one user message (temperature 0), retried with backoff."""
        body = {
            "model": self.settings.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": self.settings.temperature,
            "max_tokens": self.settings.max_tokens,
        }
        delay = self.settings.backoff_s
        for attempt in range(self.settings.retries + 1):
            self.requests += 1
            try:
                answer = self._call("POST", "/chat/completions", body)
                return str(answer["choices"][0]["message"]["content"])
            except urllib.error.HTTPError as err:
                if err.code not in RETRIED_STATUS or attempt == self.settings.retries:
                    raise JudgeError(
                        f"the judge endpoint answered HTTP {err.code} "
                        f"({err.read()[:200].decode(errors='replace')})"
                    ) from err
                retry_after = err.headers.get("Retry-After") if err.headers else None
                wait = float(retry_after) if retry_after and retry_after.isdigit() else delay
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                if attempt == self.settings.retries:
                    raise JudgeError(
                        f"the judge endpoint {self.url} stopped answering "
                        f"({getattr(err, 'reason', err)}) after {attempt + 1} tries"
                    ) from err
                wait = delay
            except (KeyError, IndexError, TypeError, ValueError) as err:
                raise JudgeError(
                    f"the judge endpoint's answer is not a chat completion ({err})"
                ) from err
            log.info("judge: retrying in %.1f s (try %d)", wait, attempt + 2)
            self.sleep(wait)
            delay *= 2
        raise AssertionError("unreachable")

    def map(self, fn: Callable[[T], Any], items: Sequence[T]) -> list[Any]:
        """`fn` over `items` with at most `max_concurrency` requests in flight, in order."""
        with ThreadPoolExecutor(self.settings.max_concurrency) as pool:
            return list(pool.map(fn, items))


__all__ = ["JudgeClient", "JudgeError", "JudgeSettings"]
