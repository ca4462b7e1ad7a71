"""Judge generations: every (generation, rubric) asked once (the store remembers answers),
at most `max_concurrency` requests in flight, unparseable answers kept and counted; and the
summary a run records (mean per score and per split, counts, the judge's identity, the
rubric set's hash).

Example:
    >>> judged = judge_rows(client, store, rubric_set("caa", "caa_sycophancy"), rows)
    >>> judged.summary("select")["behaviour"]
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from sadi.judge.client import JudgeClient
from sadi.judge.rubrics import COMBINED, RubricSet, harmonic_mean
from sadi.judge.store import JudgementStore

log = logging.getLogger(__name__)


@dataclass
class Judged:
    """Per row: id, split, question, generation, `scores` {score: int | None} and the judge's
    raw `answers`; `rubrics` the set used."""

    rows: list[dict[str, Any]]
    rubrics: RubricSet
    asked: int = 0  # requests this call sent (cached answers not counted)
    cached: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self, split: str | None = None) -> dict[str, Any]:
        """Means of the parsed scores (and the combined score) over the rows of `split`
        (None: all), with how many were parsed and how many were not."""
        rows = [r for r in self.rows if split is None or r.get("split") == split]
        out: dict[str, Any] = {"n": len(rows)}
        for rubric in self.rubrics.rubrics:
            values = [r["scores"][rubric.score] for r in rows]
            parsed = [v for v in values if v is not None]
            out[rubric.score] = sum(parsed) / len(parsed) if parsed else None
            out[f"{rubric.score}_unparseable"] = len(values) - len(parsed)
        if self.rubrics.combined:
            combined = [r[COMBINED] for r in rows if r.get(COMBINED) is not None]
            out[COMBINED] = sum(combined) / len(combined) if combined else None
        return out


def score_of(row: dict[str, Any], name: str) -> float | None:
    """A judged row's score `name` (a rubric's score, or COMBINED); None when unparseable."""
    value = row.get(COMBINED) if name == COMBINED else row["scores"].get(name)
    return None if value is None else float(value)


def judge_rows(
    client: JudgeClient,
    store: JudgementStore,
    rubrics: RubricSet,
    rows: Sequence[dict[str, Any]],
    concept: str = "",
    progress: bool = True,
) -> Judged:
    """Judge `rows` ({id, question, generation, split?}) under every rubric of `rubrics`."""
    settings = client.settings
    jobs: list[tuple[int, Any, str, str]] = []  # (row, rubric, key, prompt)
    answers: dict[tuple[int, str], dict[str, Any]] = {}
    for i, row in enumerate(rows):
        for rubric in rubrics.rubrics:
            key = store.key(
                settings.model,
                rubric.digest,
                row["question"],
                row["generation"],
                settings.max_tokens,
            )
            found = store.get(key)
            if found is not None:
                answers[(i, rubric.score)] = found
            else:
                prompt = rubric.prompt(row["question"], row["generation"], concept)
                jobs.append((i, rubric, key, prompt))
    cached = len(answers)
    bar = tqdm(total=len(jobs), desc=f"judging ({settings.model})", disable=not progress)

    def ask(job: tuple[int, Any, str, str]) -> None:
        i, rubric, key, prompt = job
        text = client.chat(prompt)
        value = {"answer": text, "score": rubric.parse(text)}
        store.put(key, value)  # at once: a run killed now resumes after this answer
        answers[(i, rubric.score)] = value
        bar.update(1)

    try:
        client.map(ask, jobs)
    finally:
        bar.close()
    out = []
    for i, row in enumerate(rows):
        scores = {r.score: answers[(i, r.score)]["score"] for r in rubrics.rubrics}
        judged = {
            **row,
            "scores": scores,
            "answers": {r.score: answers[(i, r.score)]["answer"] for r in rubrics.rubrics},
        }
        if rubrics.combined:
            values = list(scores.values())
            judged[COMBINED] = (
                None
                if any(v is None for v in values)
                else harmonic_mean([float(v) for v in values])
            )
        out.append(judged)
    unparseable = sum(v is None for r in out for v in r["scores"].values())
    if unparseable:
        log.warning(
            "judge: %d of %d answers had no score in range (kept in judgements, counted as "
            "*_unparseable)",
            unparseable,
            len(out) * len(rubrics.rubrics),
        )
    return Judged(out, rubrics, asked=len(jobs), cached=cached)


__all__ = ["Judged", "judge_rows", "score_of"]
