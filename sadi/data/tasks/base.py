"""The task data types: items, split sources, task specs, loaded tasks, and their errors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from sadi.infra.errors import UserError

SplitName = Literal["fit", "select", "report"]
PromptFormat = Literal["lm_eval", "ab"]
# how a task's items are scored: a key of `sadi.eval.metrics.SCORINGS` ("acc": one label;
# "mc2": normalised probability mass on all `correct` choices)
Metric = str
Record = dict[str, Any]

SPLITS: tuple[SplitName, ...] = ("fit", "select", "report")
FORMATS: tuple[PromptFormat, ...] = ("lm_eval", "ab")


class TaskError(UserError):
    """A task cannot be loaded as asked (unknown name, bad option, too few items)."""


class DataNotFoundError(UserError, FileNotFoundError):
    """A data directory or file is not where the config says; the message says where."""


class DataFormatError(UserError):
    """A data file is malformed; the message names the file and line."""


class SplitOverlapError(UserError):
    """Two splits of a task share item ids."""


@dataclass(frozen=True)
class Item:
    """One multiple-choice item, ready to score: context + one continuation per choice.

    ``correct`` lists every acceptable choice (TruthfulQA MC2); it defaults to ``(label,)``.
    """

    id: str
    question: str
    choices: tuple[str, ...]
    label: int
    correct: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.choices)
        if not 0 <= self.label < n:
            raise ValueError(
                f"item {self.id!r}: label {self.label} is out of range for {n} "
                f"choices; it must be in 0..{n - 1}"
            )
        if not self.correct:
            object.__setattr__(self, "correct", (self.label,))
        if self.label not in self.correct or any(not 0 <= i < n for i in self.correct):
            raise ValueError(
                f"item {self.id!r}: correct={self.correct} must hold label "
                f"{self.label} and only indices in 0..{n - 1}"
            )


@dataclass(frozen=True)
class SplitSource:
    """Items ``[start:stop]`` of one JSONL file, in file order or a seeded permutation."""

    file: str
    start: int = 0
    stop: int | None = None
    shuffled: bool = False

    def describe(self) -> str:
        span = "" if (self.start, self.stop) == (0, None) else f"[{self.start}:{self.stop or ''}]"
        return f"{self.file}{' shuffled' if self.shuffled else ''}{span or ' (all)'}"


@dataclass(frozen=True)
class TaskSpec:
    """One task as data.

    ``context`` and ``ab_stem`` are ``str.format`` templates over the JSONL record after
    ``prepare``; the lm_eval context loses its trailing whitespace. The lm_eval continuations
    are ``" " + c.lstrip()`` for ``c`` in the record's ``_lm_choices`` (if ``prepare`` sets
    it) else ``choices``; the ab stem also loses its trailing whitespace and the ab options
    are ``choices``, each without its leading whitespace. ``ab_stem=None`` means the question
    already lists lettered options (CAA), so the ab context is ``question + "\\nAnswer:"``.
    ``unique_choices=False`` accepts records that repeat a choice (source data scored as
    published); otherwise such records are rejected when the task loads.
    """

    folder: str
    fit: SplitSource
    select: SplitSource
    report: SplitSource
    context: str
    ab_stem: str | None
    prepare: Callable[[Record], Record] | None = None
    shuffle_choices: bool = False  # per-item seeded shuffle, for data with the answer first
    metric: Metric = "acc"
    split_seed: int = 0
    unique_choices: bool = True
    notes: str = ""

    def __post_init__(self) -> None:
        from sadi.eval.metrics import SCORINGS

        if self.metric not in SCORINGS:
            raise ValueError(
                f"task folder {self.folder!r}: metric={self.metric!r} is not a scoring of "
                f"sadi.eval.metrics.SCORINGS ({sorted(SCORINGS)})"
            )

    @property
    def split_rule(self) -> dict[SplitName, str]:
        return {s: getattr(self, s).describe() for s in SPLITS}


@dataclass(frozen=True)
class Task:
    """A loaded task: items per split, in a seeded order."""

    name: str
    splits: dict[SplitName, list[Item]]
    format: PromptFormat
    metric: Metric
    spec: TaskSpec
