"""Render a task's prompts inside a model's chat template (CAA scores A/B in chat form).

The template is applied once, to the task's items, so the contrastive pairs of the fit split
and the requests lm-eval scores see exactly the same text.
"""

from __future__ import annotations

from dataclasses import replace

from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from sadi.data.tasks import Item, Task
from sadi.infra.errors import UserError

_ANSWER_CUE = "\nAnswer:"


def chat_prompt(text: str, tokenizer: PreTrainedTokenizerBase, system: str | None = None) -> str:
    """`text` as the user turn, followed by the start of the assistant turn."""
    messages = [{"role": "user", "content": text}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    context = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert isinstance(context, str)
    return context


def chat_item(item: Item, tokenizer: PreTrainedTokenizerBase, system: str | None = None) -> Item:
    """The item's question as the user turn; choices continue the assistant turn."""
    question = item.question
    if question.endswith(_ANSWER_CUE):  # the assistant turn replaces the plain-text cue
        question = question[: -len(_ANSWER_CUE)]
    context = chat_prompt(question, tokenizer, system)
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
