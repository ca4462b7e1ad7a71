"""ITI on tiny random models of every architecture: exact arithmetic, positions, probes and
selection recomputed independently, another k from one fit, errors.

What every method owes (hooks, identity, determinism, save / load, `with_params`, batching,
scoring = generation) is checked in `test_contract.py` on ITI's default positions
("response"); the tests here add positions="all" where it takes another code path."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits
from torch import Tensor, nn

from sadi.core.activations import encode
from sadi.core.architectures import model_shape
from sadi.data.pairs import Pair
from sadi.steerers import Steerer
from sadi.steerers.iti import ITI
from tests.conftest import PAIRS, byte_tokenizer, make_tiny
from tests.helpers import CONTS, PROMPTS, assert_padding_free, forward, recording, steered

# 12 pairs: the default heldout 0.2 puts 9 in the train part and 3 in the held-apart part
ITI_PAIRS = PAIRS + [
    Pair("Ice is", " cold", " hot", "p6"),
    Pair("Grass is", " green", " red", "p7"),
    Pair("Night is", " dark", " bright", "p8"),
    Pair("One plus one is", " two", " three", "p9"),
    Pair("Cats say", " meow", " moo", "p10"),
    Pair("Honey is", " sweet", " sour", "p11"),
]
ALPHA = 3.0

# fit does not depend on alpha or positions (asserted in test_fit_is_independent...), so
# each (family, fit setting) is fitted once and its state reused by instances that differ
# only in how they apply it
_FITTED: dict[tuple[object, ...], dict[str, Tensor]] = {}


def fitted(family: str, **kw: object) -> tuple[nn.Module, ITI]:
    model = make_tiny(family)
    kw.setdefault("k", 4)
    kw.setdefault("alpha", ALPHA)
    iti = ITI(progress=False, **kw)  # type: ignore[arg-type]
    key = (family, iti.k, iti.direction, iti.heldout, iti.seed)
    if key not in _FITTED:
        fit_kw = {k: v for k, v in iti.params().items() if k not in ("alpha", "positions")}
        _FITTED[key] = (
            ITI(progress=False, **fit_kw).fit(model, byte_tokenizer(), ITI_PAIRS).tensors()
        )
    iti._load_tensors({k: v.clone() for k, v in _FITTED[key].items()})
    iti._remember_model(model, len(ITI_PAIRS))
    return model, iti


def last_token_heads(model: nn.Module, pairs: list[Pair]) -> tuple[Tensor, Tensor]:
    """[texts, L, H, d] head activations at the last token, one single-row forward per text,
    true texts first; and the labels (1 true, 0 false)."""
    shape = model_shape(model)
    tok = byte_tokenizer()
    rows = []
    for comps in ([p.positive for p in pairs], [p.negative for p in pairs]):
        for p, comp in zip(pairs, comps):
            with recording(model, "head") as seen:
                forward(model, encode(tok, [p.prompt], [comp]))
            rows.append(torch.stack([seen[i][0, -1] for i in range(shape.n_layers)]))
    acts = torch.stack(rows).view(2 * len(pairs), shape.n_layers, shape.n_heads, shape.head_dim)
    labels = torch.cat([torch.ones(len(pairs)), torch.zeros(len(pairs))]).long()
    return acts, labels


# ----- arithmetic and positions ---------------------------------------------------------
@pytest.mark.parametrize("positions", ["response", "all"])
def test_edited_elements_equal_the_formula_and_nothing_else_moves(
    family: str, positions: str
) -> None:
    model, iti = fitted(family, positions=positions)
    state = iti.fitted_state()
    hd = model_shape(model).head_dim
    batch = encode(byte_tokenizer(), PROMPTS, CONTS)  # right padding: row 1 and 2 carry pads
    cells = batch.layout.mask(positions)  # [batch, pos]
    assert iti.edit_policy == positions and 0 < int(cells.sum()) < cells.numel()
    with recording(model, "head") as before:
        with iti.apply(model) as handle:
            handle.set_layout(batch.layout)
            with recording(model, "head") as after:
                forward(model, batch)
    assert iti.selected_heads(), "fit selected nothing"
    for layer in range(model_shape(model).n_layers):
        expected = before[layer].clone()
        for lay, head in iti.selected_heads():
            if lay == layer:
                part = slice(head * hd, (head + 1) * hd)
                shift = ALPHA * state.sigma[lay, head] * state.direction[lay, head]  # [d]
                expected[..., part][cells] = before[layer][..., part][cells] + shift
        if layer in iti.selected_layers():
            assert not torch.equal(after[layer], before[layer])
        assert torch.equal(after[layer], expected), f"layer {layer}"


def test_prompt_untouched_before_its_last_token_under_response(family: str) -> None:
    model, cont = fitted(family, alpha=8.0, positions="response")
    _, every = fitted(family, alpha=8.0, positions="all")
    batch = encode(byte_tokenizer(), PROMPTS, CONTS)
    base = forward(model, batch)
    out_cont, out_all = steered(model, cont, batch), steered(model, every, batch)
    for row, (n_prompt, n_seq) in enumerate(
        zip(batch.layout.prompt_lengths.tolist(), batch.layout.seq_lengths.tolist())
    ):
        assert torch.equal(out_cont[row, : n_prompt - 1], base[row, : n_prompt - 1])
        assert not torch.equal(out_cont[row, n_prompt - 1], base[row, n_prompt - 1])
        assert not torch.equal(out_cont[row, n_prompt:n_seq], base[row, n_prompt:n_seq])
        assert not torch.equal(out_all[row, :n_prompt], base[row, :n_prompt])


def test_all_positions_left_and_right_padding_equal_one_by_one(family: str) -> None:
    """positions="all" edits every real token, none of the pads, wherever they are."""
    model, iti = fitted(family, positions="all")
    assert_padding_free(model, iti, byte_tokenizer())


@pytest.mark.parametrize("positions", ["response", "all"])
def test_generate_edits_every_generated_token(family: str, positions: str) -> None:
    """With a KV cache, every decoding step edits its one new token in every row."""
    model, iti = fitted(family, positions=positions)
    batch = encode(byte_tokenizer(), ["Hello there", "Hi"], padding_side="left")
    layer = iti.selected_layers()[0]
    fn = iti._edit_fns(model)[layer]
    calls: list[tuple[int, int]] = []  # (positions in the forward, edited cells)

    def spy(lay: int, act: Tensor, rows: Tensor, pos: Tensor) -> Tensor:
        calls.append((int(act.shape[1]), int(rows.numel())))
        new = fn(lay, act, rows, pos)
        assert not torch.equal(new, act)
        return new

    iti._edit_fns = lambda m: {layer: spy}  # type: ignore[method-assign]
    new_tokens = 4
    with iti.apply(model):
        out = model.generate(
            batch.input_ids,
            attention_mask=batch.attention_mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        )
    assert out.shape[1] == batch.input_ids.shape[1] + new_tokens
    # the prefill predicts the first new token; each later one comes from a decoding step
    decode_steps = [(1, 2)] * (new_tokens - 1)
    if positions == "all":  # the prefill edits every real prompt token
        prefill = [(batch.input_ids.shape[1], int(batch.attention_mask.sum()))]
        assert calls == prefill + decode_steps
    else:  # the prefill's last token produces the first new token: edited in each row
        assert calls == [(batch.input_ids.shape[1], 2)] + decode_steps


# ----- fit ------------------------------------------------------------------------------
def test_fit_is_independent_of_how_it_is_applied(family: str) -> None:
    """A fit with another alpha and positions="all" gives the tensors of the cached one
    (alpha 3, "response"): how a fit is applied is no part of it."""
    _, cached = fitted(family)
    model = make_tiny(family)
    again = ITI(k=4, alpha=-2.0, positions="all", progress=False)
    again.fit(model, byte_tokenizer(), ITI_PAIRS)
    for name, tensor in cached.tensors().items():
        assert torch.equal(again.tensors()[name], tensor), name


def test_split_is_seeded_and_by_pair() -> None:
    train, held = ITI.split_pairs(12, 0.2, 42)
    assert len(train) == 9 and len(held) == 3  # int(12 * 0.8) pairs train the probes
    assert sorted(train.tolist() + held.tolist()) == list(range(12))
    again = ITI.split_pairs(12, 0.2, 42)
    assert torch.equal(again[0], train) and torch.equal(again[1], held)
    assert not torch.equal(ITI.split_pairs(12, 0.2, 7)[1], held)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_selection_theta_and_sigma_recomputed_independently(family: str) -> None:
    """Probes, top-K (ties to the lower index), theta and sigma, from single-row forwards."""
    k = 5
    model = make_tiny(family)
    acts, labels = last_token_heads(model, ITI_PAIRS)  # [24, L, H, d], [24]
    n_layers, n_heads = acts.shape[1], acts.shape[2]
    n = len(ITI_PAIRS)
    train_pairs, held_pairs = ITI.split_pairs(n, 0.2, 42)
    train = torch.cat([train_pairs, train_pairs + n]).numpy()
    held = torch.cat([held_pairs, held_pairs + n]).numpy()
    x, y = acts.double().numpy(), labels.numpy()
    accuracy = np.zeros((n_layers, n_heads))
    coef = np.zeros((n_layers, n_heads, acts.shape[3]))
    with threadpool_limits(limits=1, user_api="blas"):  # tiny problems: threads only spin
        for layer in range(n_layers):
            for head in range(n_heads):
                probe = LogisticRegression(max_iter=1000, random_state=42)
                probe.fit(x[train, layer, head], y[train])
                predicted = probe.predict(x[held, layer, head])
                accuracy[layer, head] = float(np.mean(predicted == y[held]))
                coef[layer, head] = probe.coef_[0]
    order = sorted(range(n_layers * n_heads), key=lambda i: (-accuracy.flat[i], i))

    for direction in ("mass_mean", "probe"):
        _, iti = fitted(family, k=k, direction=direction)
        state = iti.fitted_state()
        np.testing.assert_allclose(state.accuracy.numpy(), accuracy, atol=1e-6)
        assert set(state.mask.flatten().nonzero().flatten().tolist()) == set(order[:k])
        assert int(state.mask.sum()) == k
        # theta and sigma of every head (another k selects from the same fit)
        for layer, head in [(a, b) for a in range(n_layers) for b in range(n_heads)]:
            a = acts[:, layer, head].double()  # [texts, d]
            if direction == "mass_mean":
                raw = a[:n].mean(0) - a[n:].mean(0)  # every fit text, as the authors' code
            else:
                raw = torch.from_numpy(coef[layer, head])
            theta = raw / raw.norm()
            sigma = (a @ theta).std(correction=0)
            got = state.direction[layer, head].double()
            torch.testing.assert_close(got, theta, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(
                state.sigma[layer, head].double(), sigma, atol=1e-4, rtol=1e-4
            )
            assert math.isclose(float(got.norm()), 1.0, abs_tol=1e-5)
        # another k: the same fit's next most accurate heads, edited exactly as a fresh fit
        more = iti.with_params(k=k + 3)
        assert set(more.fitted_state().mask.flatten().nonzero().flatten().tolist()) == set(
            order[: k + 3]
        )
        _, fresh = fitted(family, k=k + 3, direction=direction)
        assert torch.equal(more.shift(), fresh.shift())
        adopted = ITI(k=k + 3, direction=direction, progress=False).adopt(iti)
        assert torch.equal(adopted.fitted_state().mask, fresh.fitted_state().mask)


def test_an_artifact_with_only_its_own_heads_refuses_another_k(tmp_path: Path) -> None:
    model, iti = fitted("llama", k=2)
    iti.save(tmp_path)
    assert json.loads((tmp_path / "steerer.json").read_text())["heads_stored"] == "all"
    assert Steerer.load(tmp_path, model).with_params(k=5).fitted_state().mask.sum() == 5
    # as sadi wrote it before k became an apply parameter: no heads_stored field
    meta = json.loads((tmp_path / "steerer.json").read_text())
    del meta["heads_stored"]
    (tmp_path / "steerer.json").write_text(json.dumps(meta))
    old = Steerer.load(tmp_path, model)
    assert old.with_params(k=2, alpha=3.0).fitted_state().mask.sum() == 2
    with pytest.raises(ValueError, match="own 2 heads only .* refit it with this k"):
        old.with_params(k=5)
    with pytest.raises(ValueError, match="refit it with this k"):
        ITI(k=5, progress=False).adopt(old)


def test_scaled_k() -> None:
    assert ITI.scaled_k(1024) == 48
    assert ITI.scaled_k(30 * 9) == 13  # SmolLM2-135M
    assert ITI.scaled_k(12) == 1 and ITI.scaled_k(1) == 1
    assert ITI.scaled_k(32) == 2  # 1.5 rounds half up
    with pytest.raises(ValueError, match="n_heads_total must be positive"):
        ITI.scaled_k(0)


# ----- artifacts ------------------------------------------------------------------------
@pytest.mark.parametrize("direction", ["mass_mean", "probe"])
def test_artifact_holds_every_heads_direction_and_restores_positions(
    tmp_path: Path, direction: str
) -> None:
    """The saved state covers the whole head grid: the mask (bool), and accuracy, theta and
    sigma (float32) of every head, so that another k selects from it; loaded, the steerer
    edits where it was saved to (positions="all", generated tokens included)."""
    model, iti = fitted("gemma3", direction=direction, positions="all")
    iti.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"steerer.safetensors", "steerer.json"}
    loaded = ITI.load(tmp_path, model)
    assert isinstance(loaded, ITI) and loaded.direction == direction
    assert loaded.edit_policy == "all" and loaded.edit_generated
    shape = model_shape(model)
    grid = (shape.n_layers, shape.n_heads)
    back = loaded.tensors()
    assert set(back) == {"accuracy", "mask", "direction", "sigma"}
    assert back["mask"].dtype == torch.bool and back["mask"].shape == grid
    assert back["direction"].shape == (*grid, shape.head_dim)
    for name in ("accuracy", "direction", "sigma"):
        assert back[name].dtype == torch.float32, name
    meta = loaded.metadata()
    assert meta["method"] == "iti" and meta["component"] == "head"
    assert meta["fingerprint"]["architecture"] == "Gemma3ForCausalLM"
    assert meta["n_pairs"] == len(ITI_PAIRS) and meta["direction"] == direction


# ----- errors ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(component="neuron"), r"ITI steers \['head'\], got component='neuron'"),
        (dict(component="attention"), "unknown component 'attention'"),
        (dict(k=0), "k must be a positive integer, got 0"),
        (dict(k=-3), "k must be a positive integer"),
        (dict(alpha=math.inf), "alpha must be a finite number, got inf"),
        (dict(alpha=float("nan")), "alpha must be a finite number"),
        (dict(direction="random"), r"direction must be one of \['mass_mean', 'probe'\], got 'ra"),
        (dict(positions="last_prompt"), r"positions must be one of \['response', 'all'\]"),
        (dict(heldout=0.0), "heldout must be a fraction strictly between 0 and 1, got 0.0"),
        (dict(heldout=1.0), "heldout must be a fraction"),
        (dict(heldout=math.nan), "heldout must be a finite number"),
    ],
)
def test_bad_hyperparameters(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ITI(**kwargs)


def test_k_above_the_number_of_heads() -> None:
    model = make_tiny("llama")
    match = r"k=13 is above the number of heads of this model, 12 \(3 layers x 4 heads\)"
    with pytest.raises(ValueError, match=match):
        ITI(k=13, progress=False).fit(model, byte_tokenizer(), ITI_PAIRS)


def test_one_class_missing_in_a_part() -> None:
    model = make_tiny("llama")
    tok = byte_tokenizer()
    with pytest.raises(
        ValueError, match=r"the train part holds 0 of the 1 pairs, with labels \[\]"
    ):
        ITI(k=1, progress=False).fit(model, tok, ITI_PAIRS[:1])
    with pytest.raises(ValueError, match="more pairs, or a different heldout"):
        ITI(k=1, heldout=0.95, progress=False).fit(model, tok, ITI_PAIRS)
    # a heldout this small rounds to the whole fit set: nothing left to score the probes
    with pytest.raises(ValueError, match="the held-apart part holds 0 of the 12 pairs"):
        ITI(k=1, heldout=1e-17, progress=False).fit(model, tok, ITI_PAIRS)


def test_bad_pairs_and_unfitted() -> None:
    model = make_tiny("llama")
    tok = byte_tokenizer()
    with pytest.raises(ValueError, match="no contrastive pairs"):
        ITI(progress=False).fit(model, tok, [])
    with pytest.raises(ValueError, match="pair 1 .*positive == negative"):
        ITI(k=1, progress=False).fit(model, tok, [PAIRS[0], Pair("Q", " a", " a", "x")])
    with pytest.raises(RuntimeError, match="not fitted"):
        with ITI().apply(model):
            pass


def test_the_random_heads_control_shares_the_fit_and_keeps_each_heads_own_shift() -> None:
    """heads=random: k heads drawn with the seed (not the top-k), each with its own fitted
    theta and sigma; a with_params of the fit, deterministic, another seed other heads."""
    model, tok = make_tiny("llama"), byte_tokenizer()
    iti = ITI(k=4, alpha=5.0, progress=False).fit(model, tok, list(PAIRS))
    rnd = iti.with_params(heads="random")
    again = ITI(k=4, alpha=5.0, heads="random", progress=False).adopt(iti)
    top, drawn = iti.fitted_state(), rnd.fitted_state()
    assert int(drawn.mask.sum()) == 4 and torch.equal(again.fitted_state().mask, drawn.mask)
    assert not torch.equal(drawn.mask, top.mask)
    assert drawn.direction is top.direction and drawn.sigma is top.sigma  # the same fit
    other = ITI(k=4, alpha=5.0, seed=7, heads="random", progress=False)
    other.record, other.state = iti.record, iti.state
    other._share_fit(iti)
    assert not torch.equal(other.fitted_state().mask, drawn.mask)
    back = rnd.with_params(heads="top")
    assert torch.equal(back.fitted_state().mask, top.mask)


def test_the_fit_records_the_consistency_of_each_heads_pair_differences(tmp_path: Path) -> None:
    """consistency[l][h]: the mean over pairs of cos(diff_i, mean diff) of that head's
    activations, recomputed here from the activations; carried by with_params and load."""
    from sadi.core.activations import read_pair_activations

    model, tok = make_tiny("llama"), byte_tokenizer()
    iti = ITI(k=3, alpha=5.0, progress=False).fit(model, tok, list(PAIRS))
    shape = model_shape(model)
    pos, neg = read_pair_activations(model, tok, list(PAIRS), "head", shape, progress=False)
    d = (pos - neg).view(len(PAIRS), shape.n_layers, shape.n_heads, shape.head_dim)
    cos = torch.nn.functional.cosine_similarity(d, d.mean(0, keepdim=True), dim=-1).mean(0)
    torch.testing.assert_close(torch.tensor(iti.consistency), cos, atol=1e-5, rtol=0)
    assert iti.with_params(k=2).consistency == iti.consistency
    iti.save(tmp_path / "s")
    assert ITI.load(tmp_path / "s", model).consistency == iti.consistency
