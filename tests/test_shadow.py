"""Faithful SADI in one forward (a shadow position, sadi.core.shadow) equals the two-pass path."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import nn

from sadi.core.activations import encode
from sadi.core.architectures import architecture_of
from sadi.core.shadow import supports_shadow
from sadi.eval.lm import SteeredLM
from sadi.steerers import SADI
from tests.conftest import PAIRS, byte_tokenizer, make_tiny
from tests.helpers import CONTS, PROMPTS, forward, loglikelihood_requests, steered

SHADOW_FAMILIES = ["falcon", "gemma3", "gpt2", "llama", "mistral", "qwen2"]


def pair(family: str, component: str = "head", **kw: object) -> tuple[nn.Module, SADI, SADI]:
    """A tiny model and two faithful SADI steerers with one fitted state: one-pass, two-pass."""
    model = make_tiny(family)
    one = SADI(component, k=4, strength=3.0, mode="faithful", progress=False, **kw)  # type: ignore[arg-type]
    one.fit(model, byte_tokenizer(), PAIRS)
    two = SADI(component, k=4, strength=3.0, mode="faithful", **kw).adopt(one)  # type: ignore[arg-type]
    two.one_pass = False
    return model, one, two


@contextmanager
def counting_base_calls(model: nn.Module) -> Iterator[list[int]]:
    """Counts forwards of the base model (the clean pass is a second one per batch)."""
    calls = [0]
    base = getattr(model, "base_model", model)

    def count(*_: object) -> None:
        calls[0] += 1

    handle = base.register_forward_pre_hook(count)
    try:
        yield calls
    finally:
        handle.remove()


def test_architecture_table_says_who_takes_the_shadow(family: str) -> None:
    model = make_tiny(family)
    assert supports_shadow(model) == (family in SHADOW_FAMILIES)
    assert architecture_of(model).shadow == (family != "bloom")


@pytest.mark.parametrize("component", ["head", "neuron", "residual"])
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_one_pass_equals_two_pass(family: str, component: str, padding_side: str) -> None:
    model, one, two = pair(family, component)
    batch = encode(byte_tokenizer(), PROMPTS, CONTS, padding_side=padding_side)
    with counting_base_calls(model) as calls:
        fast = steered(model, one, batch)
    assert calls[0] == (1 if family in SHADOW_FAMILIES else 2)
    slow = steered(model, two, batch)
    assert fast.shape == slow.shape == (*batch.input_ids.shape, fast.shape[-1])
    real = batch.attention_mask.bool()  # outputs at pad positions are arbitrary in both
    torch.testing.assert_close(fast[real], slow[real], atol=1e-5, rtol=1e-5)
    base = forward(model, batch)
    assert not torch.allclose(fast[real], base[real], atol=1e-3), "the edit did nothing"


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_no_mask_and_no_position_ids(family: str) -> None:
    """lm-eval's log-likelihood call: right-padded ids only, no mask, no position ids."""
    model, one, two = pair(family)
    batch = encode(byte_tokenizer(), PROMPTS, CONTS, padding_side="right")
    out = {}
    for name, steerer in (("one", one), ("two", two)):
        with steerer.apply(model) as handle, torch.no_grad():
            handle.set_layout(batch.layout)
            out[name] = model(batch.input_ids).logits
    torch.testing.assert_close(out["one"], out["two"], atol=1e-5, rtol=1e-5)


def test_falls_back_when_the_forward_asks_for_more() -> None:
    """Hidden states, a KV cache or an ALiBi model: the separate clean pass runs instead."""
    model, one, two = pair("llama")
    batch = encode(byte_tokenizer(), PROMPTS, CONTS)
    n = batch.input_ids.shape[1]
    for extra in ({"output_hidden_states": True}, {"use_cache": True}):
        res = {}
        for name, steerer in (("one", one), ("two", two)):
            with steerer.apply(model) as handle, torch.no_grad():
                handle.set_layout(batch.layout)
                with counting_base_calls(model) as calls:
                    res[name] = model(batch.input_ids, attention_mask=batch.attention_mask, **extra)
                assert calls[0] == 2, extra
        torch.testing.assert_close(res["one"].logits, res["two"].logits)
        if "output_hidden_states" in extra:
            assert all(h.shape[1] == n for h in res["one"].hidden_states)
        else:
            assert res["one"].past_key_values.get_seq_length() == n


def test_generation_is_unchanged() -> None:
    """The prefill of generate() carries a cache, so it keeps the two-pass path."""
    model, one, two = pair("qwen2")
    tok = byte_tokenizer()
    tok.padding_side = "left"
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    outs = []
    for steerer in (one, two):
        with steerer.apply(model), torch.no_grad():
            outs.append(model.generate(**enc, max_new_tokens=5, do_sample=False, pad_token_id=0))
    assert torch.equal(outs[0], outs[1])


def test_lm_eval_log_likelihoods_match() -> None:
    model, one, two = pair("llama")
    tok = byte_tokenizer()
    reqs = [(PROMPTS[i % 3], CONTS[(i + 1) % 3]) for i in range(6)]
    lls = []
    for steerer in (one, two):
        lm = SteeredLM(model, steerer=steerer, tokenizer=tok, batch_size=4)
        lls.append(
            [ll for ll, _ in lm.loglikelihood(loglikelihood_requests(reqs), disable_tqdm=True)]
        )
    torch.testing.assert_close(torch.tensor(lls[0]), torch.tensor(lls[1]), atol=1e-5, rtol=0)
