import pytest

from sadi.data.chat import apply_chat_template
from sadi.data.tasks import load_task
from tests.conftest import byte_tokenizer


def test_caa_items_are_rendered_in_the_chat_template() -> None:
    tok = byte_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    task = load_task("caa_refusal", format="ab", limit=3)
    chat = apply_chat_template(task, tok)
    for split, items in chat.splits.items():
        for raw, item in zip(task.splits[split], items, strict=True):
            assert item.question.startswith("<user>") and item.question.endswith("<assistant>")
            assert raw.question.removesuffix("\nAnswer:") in item.question
            assert "Answer:" not in item.question.split("</user>")[-1]
            assert item.choices == ("(A)", "(B)") and item.label == raw.label


def test_no_chat_template_is_a_clear_error() -> None:
    tok = byte_tokenizer()
    with pytest.raises(ValueError, match="task.chat_template=false"):
        apply_chat_template(load_task("caa_refusal", limit=2), tok)
