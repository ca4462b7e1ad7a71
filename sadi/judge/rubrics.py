"""Rubrics as files: a rubric is a prompt template (conf/judge/rubrics/<file>.txt, with
`{question}`, `{answer}` and, for concept scores, `{concept}`) and a score range; its hash
(of the template's text) is part of every judgement's cache key and of the report.

Two rubric sets:

- `caa`: the CAA behaviour score, 0-10, one template per behaviour (`caa_<behaviour>.txt`),
  after the CAA paper's GPT-4 rating of open-ended answers;
- `axbench`: AxBench's three 0-2 scores (concept, instruction, fluency) and their harmonic
  mean, the figure AxBench selects by.

`parse_score` reads the judge's answer: the first number in it, which must be an integer in
the range; anything else is unparseable (kept, with the raw answer, and counted).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from sadi.infra.errors import UserError

RUBRIC_DIR = Path(__file__).resolve().parents[2] / "conf" / "judge" / "rubrics"
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
# each set's scores; a set in COMBINES also reports their harmonic mean, named COMBINED
SCORES = {"caa": ("behaviour",), "axbench": ("concept", "instruction", "fluency")}
COMBINES = frozenset({"axbench"})
COMBINED = "hmean"
# each score's range (the combined score: its parts')
RANGES = {"behaviour": (0, 10), "concept": (0, 2), "instruction": (0, 2), "fluency": (0, 2)}
RANGES[COMBINED] = (0, 2)
JUDGED_PREFIX = "judge_"  # a run's metric of a judged score: judge_<score>
PLACEHOLDERS = {
    "concept": ("concept", "answer"),
    "instruction": ("question", "answer"),
    "fluency": ("answer",),
}


class RubricError(UserError):
    """An unknown rubric set, or a template that is missing or lacks a placeholder."""


@dataclass(frozen=True)
class Rubric:
    """One score: its name, template text and range."""

    score: str  # e.g. "behaviour", "concept"
    template: str
    low: int
    high: int
    file: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.template.encode()).hexdigest()[:16]

    def prompt(self, question: str, answer: str, concept: str = "") -> str:
        return self.template.format(question=question, answer=answer, concept=concept)

    def parse(self, text: str) -> int | None:
        return parse_score(text, self.low, self.high)


@dataclass(frozen=True)
class RubricSet:
    """The scores one judging run asks for, and how they combine (`combined`)."""

    name: str
    rubrics: tuple[Rubric, ...]
    combined: str | None = None  # "harmonic_mean" of the scores, or None

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for r in self.rubrics:
            h.update(f"{r.score}:{r.low}-{r.high}:{r.digest}\n".encode())
        return h.hexdigest()[:16]


def parse_score(text: str, low: int, high: int) -> int | None:
    """The first number in `text` as an integer score in [low, high], else None."""
    match = NUMBER.search(text)
    if match is None:
        return None
    value = float(match.group())
    if not value.is_integer() or not low <= value <= high:
        return None
    return int(value)


def _read(file: str, placeholders: tuple[str, ...], directory: Path) -> str:
    path = directory / file
    if not path.is_file():
        raise RubricError(f"rubric template {path} is missing")
    text = path.read_text()
    missing = [p for p in placeholders if "{" + p + "}" not in text]
    if missing:
        raise RubricError(f"rubric template {path} lacks the placeholder(s) {missing}")
    return text


def concept_of(task: str, directory: Path = RUBRIC_DIR) -> str:
    concepts = json.loads((directory / "concepts.json").read_text())
    if task not in concepts:
        raise RubricError(f"no concept for task {task!r} in {directory / 'concepts.json'}; add one")
    return str(concepts[task])


def rubric_set(name: str, task: str, directory: Path = RUBRIC_DIR) -> RubricSet:
    """The rubric set `name` ("caa" or "axbench") for `task`'s generations."""
    if name == "caa":
        file = f"{task}.txt"
        if not (directory / file).is_file():
            raise RubricError(
                f"judge.rubric=caa scores the CAA behaviours; there is no {file} in "
                f"{directory} for task {task!r}"
            )
        template = _read(file, ("question", "answer"), directory)
        return RubricSet("caa", (Rubric("behaviour", template, *RANGES["behaviour"], file),))
    if name == "axbench":
        rubrics = tuple(
            Rubric(
                score,
                _read(f"axbench_{score}.txt", PLACEHOLDERS[score], directory),
                *RANGES[score],
                f"axbench_{score}.txt",
            )
            for score in SCORES[name]
        )
        return RubricSet("axbench", rubrics, combined="harmonic_mean")
    raise RubricError(f"judge.rubric={name!r}: choose one of {sorted(SCORES)}")


def score_names(name: str) -> list[str]:
    """The scores rubric set `name` reports, its combined score last."""
    if name not in SCORES:
        raise RubricError(f"judge.rubric={name!r}: choose one of {sorted(SCORES)}")
    return [*SCORES[name], *([COMBINED] if name in COMBINES else [])]


def judged_score(metric: str) -> str | None:
    """The score a metric name reads (`judge_behaviour` -> "behaviour"); None when the
    metric is not a judged score."""
    if not metric.startswith(JUDGED_PREFIX):
        return None
    name = metric[len(JUDGED_PREFIX) :]
    if name not in RANGES:
        raise RubricError(f"metric {metric!r}: no judged score {name!r}; known: {sorted(RANGES)}")
    return name


def harmonic_mean(values: list[float]) -> float:
    """AxBench's combination: 0 when any score is 0."""
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


__all__ = [
    "COMBINED",
    "JUDGED_PREFIX",
    "RANGES",
    "RUBRIC_DIR",
    "SCORES",
    "Rubric",
    "RubricError",
    "RubricSet",
    "concept_of",
    "harmonic_mean",
    "judged_score",
    "parse_score",
    "rubric_set",
    "score_names",
]
