"""Judgements on disk: one JSON file per (judge model, rubric hash, question, generation,
answer length), written atomically, so nothing is asked twice and a run killed mid-judging
resumes where it stopped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sadi.infra.cache import digest
from sadi.infra.files import write_text_atomic


class JudgementStore:
    """`root/<2 chars>/<digest>.json`: the judge's raw answer and the parsed score."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(model: str, rubric_digest: str, question: str, generation: str, max_tokens: int) -> str:
        return digest(
            {
                "model": model,
                "rubric": rubric_digest,
                "question": question,
                "generation": generation,
                "max_tokens": max_tokens,  # a shorter answer may be cut before its score
                "temperature": 0.0,
            }
        )

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self.path(key)
        if not path.is_file():
            self.misses += 1
            return None
        self.hits += 1
        return dict(json.loads(path.read_text()))

    def put(self, key: str, value: dict[str, Any]) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(value, sort_keys=True))


__all__ = ["JudgementStore"]
