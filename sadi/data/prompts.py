"""The prompting arms: how a `prompt=` option rewrites a task's items before anything is fitted
or scored.

- `none`: the items as the task defines them (in the chat template when the task asks).
- `instruction`: the task's instruction (`conf/task/instructions/<task>.txt`, written from the
  task's definition, never from its items) as the system message where the task is rendered
  in the chat template, else as a paragraph before the question.
- `few_shot`: `k` solved examples drawn (seeded) once from the fit split, the same for every
  item (so the sweep engine shares the prompted prefix); they leave the fit split, so no pair
  is made from an item shown as an example. In the chat template they are earlier user /
  assistant turns, else `question + answer` paragraphs before the question.

A prompt only ever comes before the question: the last prompt token, where the steerers
read and edit, is the last token of the unprompted context, and a steerer composes with any
prompt (`prompt=few_shot intervention=caa`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, get_args

from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from sadi.data.chat import Shot, chat_item, chat_prompt, require_chat_template, user_turn
from sadi.data.tasks import Item, Task
from sadi.infra.errors import UserError

PromptName = Literal["none", "instruction", "few_shot"]
PROMPTS: tuple[str, ...] = get_args(PromptName)
INSTRUCTIONS_DIR = Path(__file__).resolve().parents[2] / "conf" / "task" / "instructions"


@dataclass(frozen=True)
class Prompt:
    """One prompting arm: `name`, few_shot's `k` and `seed`, and where the instruction is
    read (`instruction_file`; None: `conf/task/instructions/<task>.txt`)."""

    name: str = "none"
    k: int = 0
    seed: int = 0
    instruction_file: str | None = None

    def __post_init__(self) -> None:
        if self.name not in PROMPTS:
            raise UserError(f"prompt.name={self.name!r} is not one of {list(PROMPTS)}")
        if self.name == "few_shot" and (isinstance(self.k, bool) or int(self.k) < 1):
            raise UserError(f"prompt=few_shot needs prompt.k >= 1 solved examples, got {self.k}")


def instruction_for(task_name: str, file: str | None = None) -> str:
    """The instruction text of `task_name` (from `file` when given)."""
    path = Path(file) if file else INSTRUCTIONS_DIR / f"{task_name}.txt"
    if not path.is_file():
        known = sorted(p.stem for p in INSTRUCTIONS_DIR.glob("*.txt"))
        raise UserError(
            f"prompt=instruction: no instruction for task {task_name!r} at {path}; write one "
            f"there (from the task's definition, never from its items) or set "
            f"prompt.instruction_file=<file> (tasks with one: {known})"
        )
    text = path.read_text(encoding="utf-8").strip()
    if not text:
        raise UserError(f"prompt=instruction: {path} is empty")
    return text


def check_prompt(prompt: Prompt, task: Task) -> None:
    """What a prompt reads, checked before any model loads: the instruction file, or enough
    fit items for the shots (UserError naming the fix)."""
    if prompt.name == "instruction":
        instruction_for(task.name, prompt.instruction_file)
    elif prompt.name == "few_shot":
        draw_shots(task, int(prompt.k), prompt.seed)


def draw_shots(task: Task, k: int, seed: int) -> list[Item]:
    """`k` items of the fit split, drawn with `seed` (the same draw for the same fit split)."""
    fit = task.splits["fit"]
    if k >= len(fit):
        raise UserError(
            f"prompt.k={k}: the fit split of {task.name} has {len(fit)} items; it must keep "
            "some for the contrastive pairs, so choose a smaller k"
        )
    return random.Random(f"few_shot:{seed}:{task.name}").sample(fit, k)


@dataclass(frozen=True)
class Rendering:
    """How one task's contexts are rendered: chat template or plain text, an instruction, shots.
    `render(question)` is the context of one question (items and open-ended prompts alike)."""

    tokenizer: PreTrainedTokenizerBase | None
    system: str | None = None
    shots: tuple[Item, ...] = ()

    @property
    def chat(self) -> bool:
        return self.tokenizer is not None

    def _turns(self) -> list[Shot]:
        return [Shot(user_turn(s.question), s.choices[s.label].strip()) for s in self.shots]

    def render(self, question: str) -> str:
        if self.tokenizer is not None:
            return chat_prompt(user_turn(question), self.tokenizer, self.system, self._turns())
        before = [f"{s.question}{s.choices[s.label]}" for s in self.shots]
        if self.system:
            before.insert(0, self.system)
        return "\n\n".join([*before, question])

    def item(self, item: Item) -> Item:
        if self.tokenizer is not None:
            return chat_item(item, self.tokenizer, self.system, self._turns())
        return replace(item, question=self.render(item.question))


def rendering(
    task: Task, prompt: Prompt, tokenizer: PreTrainedTokenizerBase, chat_template: bool
) -> tuple[Rendering, list[Item]]:
    """The rendering of `task` under `prompt`, and the shots it shows (few_shot)."""
    if chat_template:
        require_chat_template(tokenizer, task.name)
    system = (
        instruction_for(task.name, prompt.instruction_file)
        if prompt.name == "instruction"
        else None
    )
    shots = draw_shots(task, int(prompt.k), prompt.seed) if prompt.name == "few_shot" else []
    return Rendering(tokenizer if chat_template else None, system, tuple(shots)), shots


def render_task(
    task: Task, prompt: Prompt, tokenizer: PreTrainedTokenizerBase, chat_template: bool
) -> tuple[Task, Rendering]:
    """A copy of `task` with every item rendered under `prompt` (the shots taken out of the
    fit split), and the rendering (for open-ended prompts)."""
    how, shots = rendering(task, prompt, tokenizer, chat_template)
    if not how.chat and how.system is None and not shots:
        return task, how
    shown = {s.id for s in shots}
    splits = {
        s: [how.item(i) for i in items if s != "fit" or i.id not in shown]
        for s, items in task.splits.items()
    }
    return replace(task, splits=splits), how


__all__ = [
    "INSTRUCTIONS_DIR",
    "PROMPTS",
    "Prompt",
    "Rendering",
    "check_prompt",
    "draw_shots",
    "instruction_for",
    "render_task",
    "rendering",
]
