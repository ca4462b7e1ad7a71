"""Render a task's prompts inside a model's chat template (CAA scores A/B in chat form).

The template is applied once, to the task's items, so the contrastive pairs of the fit split
and the requests lm-eval scores see exactly the same text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import NamedTuple

from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from sadi.data.tasks import Item, Task
from sadi.infra.errors import UserError

ANSWER_CUE = "\nAnswer:"


class Shot(NamedTuple):
    """A solved example shown as an earlier exchange: the user's turn and the answer."""

    user: str
    assistant: str


def chat_prompt(
    text: str,
    tokenizer: PreTrainedTokenizerBase,
    system: str | None = None,
    shots: Sequence[Shot] = (),
) -> str:
    """`text` as the user turn, after the system message and the shots' turns, followed by
    the start of the assistant turn."""
    messages = [{"role": "system", "content": system}] if system else []
    for shot in shots:
        messages += [
            {"role": "user", "content": shot.user},
            {"role": "assistant", "content": shot.assistant},
        ]
    messages.append({"role": "user", "content": text})
    context = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert isinstance(context, str)
    return context


def user_turn(question: str) -> str:
    """A task question as a user turn: the assistant turn replaces the plain-text cue."""
    return question[: -len(ANSWER_CUE)] if question.endswith(ANSWER_CUE) else question


def chat_item(
    item: Item,
    tokenizer: PreTrainedTokenizerBase,
    system: str | None = None,
    shots: Sequence[Shot] = (),
) -> Item:
    """The item's question as the user turn; choices continue the assistant turn."""
    context = chat_prompt(user_turn(item.question), tokenizer, system, shots)
    choices = tuple(c.lstrip() for c in item.choices)  # the turn starts on a fresh line
    return replace(item, question=context, choices=choices)


def apply_chat_template(
    task: Task, tokenizer: PreTrainedTokenizerBase, system: str | None = None
) -> Task:
    """A copy of `task` whose every item is rendered with the tokenizer's chat template.

    Raises:
        ValueError: the tokenizer has no chat template (e.g. a base model such as Gemma 3
            270M); set `task.chat_template=false` or use an instruction-tuned model.
    """
    require_chat_template(tokenizer, task.name)
    splits = {
        s: [chat_item(i, tokenizer, system) for i in items] for s, items in task.splits.items()
    }
    return replace(task, splits=splits)


def require_chat_template(tokenizer: PreTrainedTokenizerBase, task_name: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"task {task_name!r} asks for the chat template, but this tokenizer has none "
            "(a base model?); set task.chat_template=false or use an instruction-tuned model"
        )
