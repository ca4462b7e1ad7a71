"""Classifying forwards (full, prefill, decode step) from the cache object and the mask."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import DynamicCache

from sadi.core.activations import encode
from sadi.core.forwards import ForwardKind, UnknownForward, forward_kind
from tests.conftest import byte_tokenizer, make_tiny


def _filled_cache(n: int) -> DynamicCache:
    model = make_tiny("llama")
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(torch.randint(3, 200, (1, n)), past_key_values=cache, use_cache=True)
    assert cache.get_seq_length() == n
    return cache


def test_full_forward_prefill_and_decode() -> None:
    ids = torch.ones(2, 5, dtype=torch.long)
    assert forward_kind((ids,), {}) == ForwardKind(2, 5, 0, False)
    full = forward_kind((), {"input_ids": ids, "attention_mask": torch.ones(2, 5), "cache": None})
    assert not full.decoding and not full.prefill
    empty = DynamicCache()
    prefill = forward_kind((), {"input_ids": ids, "cache": empty})
    assert prefill.prefill and not prefill.decoding
    cache = _filled_cache(7)
    step = {"input_ids": ids[:, :1], "attention_mask": torch.ones(2, 8)}
    for name in ("past_key_values", "cache", "kv_state_of_a_future_release"):
        kind = forward_kind((), {**step, name: cache})
        assert kind.decoding and kind.cached == 7 and kind.length == 1, name
    # positional, as some models take it
    assert forward_kind((ids[:, :1], cache), {}).cached == 7


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"attention_mask": torch.ones(1, 9)}, "cache of 0 positions and an attention mask of 9"),
        ({"past_key_values": ((torch.zeros(1),),)}, "past_key_values=tuple, which is not a"),
        ({"cache": object()}, "cache=object"),
        ({"cache": DynamicCache(), "past_key_values": DynamicCache()}, "several caches"),
        ({"cache_position": torch.tensor([4])}, "cache_position starts at 4"),
    ],
)
def test_forwards_it_cannot_read_fail_loudly(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(UnknownForward, match=match) as err:
        forward_kind((), {"input_ids": torch.ones(1, 1, dtype=torch.long), **kwargs})
    assert "transformers " in str(err.value) and "constraints.txt" in str(err.value)


def test_generate_forwards_are_classified_on_every_family(family: str) -> None:
    """Through `generate` with the model's own KV cache: one prefill, then decode steps
    whose cache holds exactly the tokens before them."""
    model = make_tiny(family)
    base = getattr(model, "base_model", model)
    kinds: list[ForwardKind] = []
    handle = base.register_forward_pre_hook(
        lambda m, a, kw: kinds.append(forward_kind(a, kw)), with_kwargs=True
    )
    batch = encode(byte_tokenizer(), ["Hello there", "Hi"], padding_side="left")
    n = batch.input_ids.shape[1]
    try:
        with torch.no_grad():
            model.generate(
                batch.input_ids,
                attention_mask=batch.attention_mask,
                max_new_tokens=4,
                min_new_tokens=4,
                do_sample=False,
                pad_token_id=0,
            )
            model(batch.input_ids, attention_mask=batch.attention_mask)
    finally:
        handle.remove()
    assert kinds == [
        ForwardKind(2, n, 0, True),
        *(ForwardKind(2, 1, n + i, True) for i in range(3)),
        ForwardKind(2, n, 0, False),
    ]
