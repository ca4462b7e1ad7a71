"""SADI on tiny random models of every architecture: exact arithmetic and positions, the
faithful mode's clean activations, the variants' selection, sharing one fit across k, errors.

What every method owes (hooks, identity, determinism, save / load, `with_params`, batching,
scoring = generation) is checked in `test_contract.py` on SADI's default configuration
(head, online); the tests here add SADI's other components and its faithful mode where
that configuration takes another code path."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from sadi.core.activations import encode
from sadi.core.architectures import model_shape
from sadi.core.shadow import supports_shadow
from sadi.data.pairs import Pair
from sadi.steerers import SADI, Steerer
from tests.conftest import PAIRS, byte_tokenizer, make_tiny
from tests.helpers import (
    CONTS,
    PROMPTS,
    assert_padding_free,
    count_hooks,
    forward,
    recording,
    steered,
)

COMPONENTS = ["head", "neuron", "neuron_down", "hidden", "residual"]
# every (component, mode) but the default (head, online), which the contract suite checks
OTHER_CONFIGS = [
    (c, m) for c in COMPONENTS for m in ("online", "faithful") if (c, m) != ("head", "online")
]


def fitted(family: str, component: str = "head", **kw: object) -> tuple[nn.Module, SADI]:
    model = make_tiny(family)
    k = kw.pop("k", 3)
    sadi = SADI(component, k=k, progress=False, **kw)  # type: ignore[arg-type]
    return model, sadi.fit(model, byte_tokenizer(), PAIRS)


@pytest.mark.parametrize("component, mode", OTHER_CONFIGS)
def test_strength_one_is_bit_identical_on_every_component_and_mode(
    family: str, component: str, mode: str
) -> None:
    """Strength 1 is the unsteered model on every component, and in faithful mode (which
    rewrites the forward with a shadow position or runs a clean pass) too."""
    model, sadi = fitted(family, component, strength=1.0, mode=mode)
    batch = encode(byte_tokenizer(), PROMPTS, CONTS)
    assert sadi.delta_s == 0.0
    assert torch.equal(steered(model, sadi, batch), forward(model, batch))


@pytest.mark.parametrize("component", COMPONENTS)
def test_only_selected_elements_at_last_prompt_change_by_the_formula(
    family: str, component: str
) -> None:
    model, sadi = fitted(family, component, k=4, strength=3.0)
    batch = encode(byte_tokenizer(), PROMPTS, CONTS)
    rows, pos = batch.layout.indices("last_prompt")
    width_mask = sadi.width_mask()
    with recording(model, component) as before:
        with sadi.apply(model) as handle:
            handle.set_layout(batch.layout)
            with recording(model, component) as after:
                forward(model, batch)
    assert sadi.selected_layers(), "fit selected nothing"
    for layer in range(model_shape(model).n_layers):
        expected = before[layer].clone()
        if layer in sadi.selected_layers():
            m = width_mask[layer]
            a = before[layer][rows, pos]  # [rows, width]
            expected[rows, pos] = torch.where(m, a + 2.0 * a, a)
            assert not torch.equal(after[layer], before[layer])
        assert torch.equal(after[layer], expected), f"layer {layer}"


@pytest.mark.parametrize("component", ["head", "neuron", "residual"])
def test_positions_before_last_prompt_are_untouched(family: str, component: str) -> None:
    model, sadi = fitted(family, component, k=4, strength=4.0)
    batch = encode(byte_tokenizer(), PROMPTS, CONTS)
    base, steer = forward(model, batch), steered(model, sadi, batch)
    _, last = batch.layout.indices("last_prompt")
    for row, p in enumerate(last.tolist()):
        assert torch.equal(steer[row, :p], base[row, :p])
        assert not torch.equal(steer[row, p], base[row, p])


@pytest.mark.parametrize("component", ["head", "neuron", "hidden"])
def test_faithful_left_and_right_padding_equal_one_by_one(family: str, component: str) -> None:
    """Faithful mode reads each row's clean activation at its last prompt token (from a
    shadow position after the padded rows, or a clean pass): padding moves neither the read
    nor the edit."""
    model, sadi = fitted(family, component, k=4, strength=3.0, mode="faithful")
    assert_padding_free(model, sadi, byte_tokenizer())


def test_default_layout_from_attention_mask_edits_last_token(family: str) -> None:
    """Without an explicit layout, each row's last real token is its last prompt token."""
    model, sadi = fitted(family, "head", k=4, strength=3.0)
    tok = byte_tokenizer()
    batch = encode(tok, PROMPTS, padding_side="left")
    with sadi.apply(model):
        implicit = forward(model, batch)
    assert torch.equal(implicit, steered(model, sadi, batch))


@pytest.mark.parametrize("one_pass", [True, False])
def test_faithful_uses_clean_prompt_activations(family: str, one_pass: bool) -> None:
    """Both faithful paths: the shadow position (sadi.core.shadow) and the separate clean pass."""
    model, sadi = fitted(family, "neuron", k=6, strength=3.0, mode="faithful")
    sadi.one_pass = one_pass
    batch = encode(byte_tokenizer(), PROMPTS, CONTS)
    rows, pos = batch.layout.indices("last_prompt")
    n = batch.input_ids.shape[1]
    with recording(model, "neuron") as clean:
        forward(model, batch)
    with recording(model, "neuron") as before:
        with sadi.apply(model) as handle:
            handle.set_layout(batch.layout)
            with recording(model, "neuron") as after:
                forward(model, batch)
    shadow = one_pass and supports_shadow(model)
    for layer in sadi.selected_layers():
        m = sadi.width_mask()[layer]
        c = clean[layer][rows, pos]
        got = after[layer][rows, pos]
        torch.testing.assert_close(got[:, m], (c + 2.0 * c)[:, m], atol=1e-5, rtol=1e-5)
        assert torch.equal(got[:, ~m], before[layer][rows, pos][:, ~m])
        # the shadow rides along inside the forward, and is itself never edited
        assert after[layer].shape[1] == (n + 1 if shadow else n)
        if shadow:
            assert torch.equal(after[layer][:, n], before[layer][:, n])


def test_online_equals_faithful_with_a_single_edited_layer() -> None:
    model, online = fitted("llama", "head", k=1, strength=4.0)
    faithful = SADI("head", k=1, strength=4.0, mode="faithful", progress=False)
    faithful.fit(model, byte_tokenizer(), PAIRS)
    batch = encode(byte_tokenizer(), PROMPTS, CONTS)
    torch.testing.assert_close(steered(model, online, batch), steered(model, faithful, batch))


def test_fixed_variant_adds_masked_mean_difference() -> None:
    model, sadi = fitted("qwen2", "hidden", k=5, strength=2.5, variant="fixed")
    batch = encode(byte_tokenizer(), PROMPTS, CONTS)
    rows, pos = batch.layout.indices("last_prompt")
    state = sadi.fitted_state()
    with recording(model, "hidden") as before:
        with sadi.apply(model) as handle:
            handle.set_layout(batch.layout)
            with recording(model, "hidden") as after:
                forward(model, batch)
    for layer in sadi.selected_layers():
        m = state.mask[layer]
        a = before[layer][rows, pos]
        expected = torch.where(m, a + 1.5 * state.direction[layer], a)
        assert torch.equal(after[layer][rows, pos], expected)


def test_random_variant_is_seeded_and_differs_from_top_k() -> None:
    model = make_tiny("llama")
    tok = byte_tokenizer()
    fit = lambda **kw: SADI("neuron", k=10, progress=False, **kw).fit(model, tok, PAIRS)  # noqa: E731
    a, b, c = (
        fit(variant="random", seed=1),
        fit(variant="random", seed=1),
        fit(variant="random", seed=2),
    )
    top = fit()
    assert torch.equal(a.fitted_state().mask, b.fitted_state().mask)
    assert not torch.equal(a.fitted_state().mask, c.fitted_state().mask)
    assert not torch.equal(a.fitted_state().mask, top.fitted_state().mask)
    assert int(a.fitted_state().mask.sum()) == 10


def test_top_k_by_signed_delta_and_head_score_is_mean_over_head_dim() -> None:
    model, sadi = fitted("llama", "head", k=3)
    tok = byte_tokenizer()
    # independent recomputation of delta from single-row forwards
    diffs = []
    n = model_shape(model)
    for p in PAIRS:
        acts = []
        for comp in (p.positive, p.negative):
            batch = encode(tok, [p.prompt], [comp])
            with recording(model, "head") as seen:
                forward(model, batch)
            acts.append(torch.stack([seen[i][0, -1] for i in range(n.n_layers)]))
        diffs.append(acts[0] - acts[1])
    delta = torch.stack(diffs).view(len(PAIRS), n.n_layers, n.n_heads, n.head_dim).mean(3).mean(0)
    state = sadi.fitted_state()
    torch.testing.assert_close(state.delta, delta, atol=1e-5, rtol=1e-5)
    top = set(torch.topk(delta.flatten(), 3).indices.tolist())
    assert set(state.mask.flatten().nonzero().flatten().tolist()) == top


def test_faithful_leaves_no_hook_after_exit_or_exception(family: str) -> None:
    """Faithful mode's clean pass runs inside the steered forward: its hooks go too."""
    model, sadi = fitted(family, "head", k=4, strength=2.0, mode="faithful")
    n0 = count_hooks(model)
    batch = encode(byte_tokenizer(), PROMPTS, CONTS)
    steered(model, sadi, batch)
    assert count_hooks(model) == n0
    with pytest.raises(RuntimeError, match="boom"):
        with sadi.apply(model) as handle:
            handle.set_layout(batch.layout)
            forward(model, batch)
            raise RuntimeError("boom")
    assert count_hooks(model) == n0


def test_generate_edits_prefill_only(family: str) -> None:
    """With a KV cache, SADI edits the last prompt token during prefill, never a new token."""
    model, sadi = fitted(family, "head", k=4, strength=3.0)
    tok = byte_tokenizer()
    batch = encode(tok, ["Hello there"], padding_side="left")
    edits: list[int] = []
    layer = sadi.selected_layers()[0]
    fn = sadi._edit_fns(model)[layer]

    def spy(lay: int, act: Tensor, rows: Tensor, pos: Tensor) -> Tensor:
        edits.append(int(act.shape[1]))
        return fn(lay, act, rows, pos)

    sadi._edit_fns = lambda m: {layer: spy}  # type: ignore[method-assign]
    with sadi.apply(model):
        model.generate(
            batch.input_ids,
            attention_mask=batch.attention_mask,
            max_new_tokens=3,
            do_sample=False,
            pad_token_id=0,
        )
    assert edits == [batch.input_ids.shape[1]]


@pytest.mark.parametrize("component", COMPONENTS)
def test_artifact_holds_the_component_grid_and_the_model(tmp_path: Path, component: str) -> None:
    """The saved delta (float32) and mask (bool) have the component's [layers, elements]
    grid; the metadata names the architecture, the pairs and the versions."""
    model, sadi = fitted("gemma3", component, k=3, strength=2.0, mode="faithful")
    sadi.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"steerer.safetensors", "steerer.json"}
    loaded = Steerer.load(tmp_path, model)
    assert isinstance(loaded, SADI) and loaded.mode == "faithful"
    back = loaded.fitted_state()
    grid = model_shape(model).grid(component)
    assert back.delta.shape == grid and back.delta.dtype == torch.float32
    assert back.mask.shape == grid and back.mask.dtype == torch.bool
    meta = loaded.metadata()
    assert meta["fingerprint"]["architecture"] == "Gemma3ForCausalLM"
    assert meta["n_pairs"] == len(PAIRS) and "torch" in meta["versions"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(k=0), "k must be a positive integer, got 0"),
        (dict(k=-2), "k must be a positive integer"),
        (dict(strength=math.inf), "strength must be a finite number, got inf"),
        (dict(strength=float("nan")), "strength must be a finite number"),
        (dict(component="attention"), "unknown component 'attention'"),
        (dict(mode="twopass"), r"mode must be one of \['online', 'faithful'\]"),
    ],
)
def test_bad_hyperparameters(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SADI(**kwargs)


@pytest.mark.parametrize("variant", ["dynamic", "random"])
def test_another_k_shares_the_fit_and_selects_as_a_fresh_fit(variant: str) -> None:
    model, four = fitted("llama", "neuron", k=4, strength=3.0, variant=variant)
    _, seven = fitted("llama", "neuron", k=7, strength=3.0, variant=variant)
    shared = four.with_params(k=7)
    assert shared.fitted_state().delta is four.fitted_state().delta  # no refit
    assert torch.equal(shared.fitted_state().mask, seven.fitted_state().mask)
    assert int(four.fitted_state().mask.sum()) == 4  # the source keeps its own mask
    batch = encode(byte_tokenizer(), PROMPTS, CONTS)
    assert torch.equal(steered(model, shared, batch), steered(model, seven, batch))
    # a cached fit of another k is adopted with this k's elements
    adopted = SADI("neuron", k=7, strength=3.0, variant=variant, progress=False).adopt(four)
    assert torch.equal(adopted.fitted_state().mask, seven.fitted_state().mask)
    assert SADI("neuron", k=4).fit_key(model, PAIRS) == SADI("neuron", k=7).fit_key(model, PAIRS)
    with pytest.raises(ValueError, match=r"k=1000 exceeds"):
        four.with_params(k=1000)


def test_k_larger_than_the_grid() -> None:
    model = make_tiny("llama")
    with pytest.raises(ValueError, match=r"k=13 exceeds the 12 head elements"):
        SADI("head", k=13, progress=False).fit(model, byte_tokenizer(), PAIRS)


def test_bad_pairs() -> None:
    model = make_tiny("llama")
    tok = byte_tokenizer()
    with pytest.raises(ValueError, match="no contrastive pairs"):
        SADI(progress=False).fit(model, tok, [])
    with pytest.raises(ValueError, match="pair 1 .*positive == negative"):
        SADI(progress=False).fit(model, tok, [PAIRS[0], Pair("Q", " a", " a", "x")])
    long = Pair("x" * 300, " a", " b", "long")
    with pytest.raises(ValueError, match="longer than the model's context of 256"):
        SADI(progress=False).fit(model, tok, [long])


def test_a_whole_layer_scaled_under_a_post_block_norm_is_cancelled_and_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """On Gemma 2 (and 3) a norm follows the attention block before the residual add: SADI
    scaling every head of a layer is divided out again (up to the norm's epsilon). On the tiny
    Gemma 2 the fit's top 4 heads are exactly layer 2's four: the edit moves the logits by
    less than 1e-5, and SADI says so; on Llama (no such norm) the same whole-layer scale
    moves them. The contract suite therefore steers SADI with k=3."""
    batch = encode(byte_tokenizer(), PROMPTS, CONTS)
    caplog.set_level("WARNING", logger="sadi.steerers.sadi")
    gemma = make_tiny("gemma2")
    sadi = SADI("head", k=4, strength=4.0, progress=False).fit(gemma, byte_tokenizer(), PAIRS)
    assert sadi.cancelled_layers(gemma) == [2]
    moved = (steered(gemma, sadi, batch) - forward(gemma, batch)).abs().max()
    assert float(moved) < 1e-5
    assert "selects every head element of layer(s) [2]" in caplog.text
    assert sadi.with_params(k=3).cancelled_layers(gemma) == []

    llama = make_tiny("llama")
    whole = SADI("head", k=4, strength=4.0, progress=False).fit(llama, byte_tokenizer(), PAIRS)
    assert whole.cancelled_layers(llama) == []
    assert float((steered(llama, whole, batch) - forward(llama, batch)).abs().max()) > 1e-3
