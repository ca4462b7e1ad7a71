"""AUSteer on tiny random models of every architecture: momentum, selection, exact edits at
every position (scoring and KV-cache generation), padding, every site of Gemma 2 and Qwen 3,
bad input; and end to end on the embedded SmolLM2 (slow).

What every method owes (hooks, identity, determinism, save / load, `with_params`, batching,
scoring = generation) is checked in `test_contract.py` on AUSteer's default site (head), on
every tiny family, Gemma 2 and Qwen 3 included."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import sadi.core.activations as activations_module
import sadi.steerers.austeer as austeer_module
from sadi.core.activations import encode
from sadi.core.architectures import architecture_of, model_shape, site
from sadi.core.hooks import LayerHook, hooked
from sadi.data.pairs import Pair
from sadi.steerers import AUSteer
from sadi.steerers.austeer import SITES, momentum
from tests.conftest import PAIRS, byte_tokenizer, make_tiny
from tests.helpers import CONTS, PROMPTS, forward, run_then_lm_eval, steered

SITE_COMPONENTS = sorted(SITES.values())  # head, hidden, residual: the paper's three sites
_FITS: dict[tuple[str, str], tuple[nn.Module, AUSteer]] = {}


def fitted(family: str, component: str = "head", **params: Any) -> tuple[nn.Module, AUSteer]:
    """A tiny model and AUSteer fitted on it (one fit per family and site, then with_params)."""
    key = (family, component)
    if key not in _FITS:
        model = make_tiny(family)
        au = AUSteer(component, k=6, alpha=4.0, progress=False)
        _FITS[key] = (model, au.fit(model, byte_tokenizer(), PAIRS))
    model, au = _FITS[key]
    return model, au.with_params(**params)


def by_hand(au: AUSteer) -> dict[int, list[tuple[int, float]]]:
    """{layer: [(dim, factor)]} of the selected units, from beta by plain Python."""
    beta = au.fitted_state().beta
    out: dict[int, list[tuple[int, float]]] = {}
    for layer, dim in zip(*(t.tolist() for t in au.selected_units())):
        b = float(beta[layer, dim])
        gamma = math.copysign(1.0, b) if b and au.variant == "fixed_strength" else b
        gamma = 0.0 if au.variant == "fixed_strength" and b == 0 else gamma
        out.setdefault(layer, []).append((dim, gamma))
    return out


# ----- activation momentum ---------------------------------------------------------------
# columns: 3 up 1 down (+0.6); 1 up 2 down (-0.4); all zero; a 2-2 tie; all down; one up
DIFF = torch.tensor(
    [
        [1.0, -1.0, 0.0, 1.0, -1.0, 0.0],
        [2.0, -2.0, 0.0, -1.0, -1.0, 0.0],
        [3.0, 0.0, 0.0, 1.0, -1.0, 0.0],
        [-1.0, 0.0, 0.0, -1.0, -1.0, 0.0],
        [0.0, 1.0, 0.0, 0.0, -1.0, 2.0],
    ]
)


@pytest.mark.parametrize(
    "ties, expected",
    [
        ("positive", [0.6, -0.4, 0.0, 0.4, -1.0, 0.2]),
        ("negative", [0.6, -0.4, 0.0, -0.4, -1.0, 0.2]),
    ],
)
def test_momentum_by_hand(ties: str, expected: list[float]) -> None:
    beta = momentum(DIFF, ties)  # type: ignore[arg-type]
    assert beta.dtype == torch.float32
    assert beta.tolist() == pytest.approx(expected, abs=1e-7)
    assert math.copysign(1.0, float(beta[2])) == 1.0  # no negative zero on an all-zero unit


def test_fit_counts_constructed_activations_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """fit's beta and mean difference, on activations given by hand (read_activations
    replaced), equal a plain-Python count; pairs are read in several chunks."""
    model = make_tiny("llama")
    shape = model_shape(model)
    n, layers, width = 7, shape.n_layers, shape.d_model
    gen = torch.Generator().manual_seed(3)
    pos = torch.randint(-2, 3, (n, layers, width), generator=gen).float()
    neg = torch.randint(-2, 3, (n, layers, width), generator=gen).float()
    pairs = [Pair(f"p{i}", " yes", " no", f"i{i}") for i in range(n)]
    calls: list[dict[str, Any]] = []

    def fake(
        model: nn.Module, tok: Any, prompts: list[str], completions: list[str], *a: Any, **kw: Any
    ) -> Tensor:
        calls.append(kw)
        rows = [(pos if c == " yes" else neg)[int(p[1:])] for p, c in zip(prompts, completions)]
        return torch.stack(rows)

    monkeypatch.setattr(activations_module, "read_activations", fake)
    monkeypatch.setattr(austeer_module, "CHUNK_PAIRS", 3)
    for ties in ("positive", "negative"):
        au = AUSteer("residual", k=4, alpha=1.0, ties=ties, progress=False)  # type: ignore[arg-type]
        au.fit(model, byte_tokenizer(), pairs)
        beta, mean_diff = au.fitted_state().beta, au.fitted_state().mean_diff
        for layer in range(layers):
            for dim in range(width):
                d = [float(pos[i, layer, dim] - neg[i, layer, dim]) for i in range(n)]
                up, down = sum(x > 0 for x in d), sum(x < 0 for x in d)
                positive = up >= down if ties == "positive" else up > down
                want = up / n if positive else -down / n
                assert float(beta[layer, dim]) == pytest.approx(want, abs=1e-7)
                assert float(mean_diff[layer, dim]) == pytest.approx(sum(d) / n, abs=1e-6)
    assert len(calls) == 2 * 3  # 7 pairs in chunks of 3, twice
    # the read position is the last token of the whole sequence (prompt + completion)
    assert all(c["policy"] == "last_token" and c["offset"] == 0 for c in calls)


def test_fit_reads_each_rows_last_real_token(family: str) -> None:
    """beta equals the momentum of the site read one unpadded row at a time at its last token."""
    model, au = fitted(family, "hidden")
    tok = byte_tokenizer()
    layers = model_shape(model).n_layers
    reads: list[Tensor] = []
    for completion_of in (lambda p: p.positive, lambda p: p.negative):
        rows = []
        for p in PAIRS:
            batch = encode(tok, [p.prompt], [completion_of(p)])
            seen: dict[int, Tensor] = {}
            hooks = [
                LayerHook(i, lambda i, a, seen=seen: seen.__setitem__(i, a.clone()))
                for i in range(layers)
            ]
            with hooked(model, site(architecture_of(model), "hidden"), hooks):
                forward(model, batch)
            rows.append(torch.stack([seen[i][0, -1] for i in range(layers)]))
        reads.append(torch.stack(rows))
    diff = reads[0] - reads[1]
    assert torch.equal(au.fitted_state().beta, momentum(diff))
    torch.testing.assert_close(au.fitted_state().mean_diff, diff.mean(0), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_batched_fit_equals_one_by_one(family: str, padding_side: str) -> None:
    model = make_tiny(family)
    tok = byte_tokenizer()
    one = AUSteer("residual", k=4, batch_size=1, progress=False).fit(model, tok, PAIRS)
    batched = AUSteer("residual", k=4, batch_size=4, progress=False)
    batched.fit(model, tok, PAIRS, padding_side=padding_side)  # type: ignore[arg-type]
    assert torch.equal(one.fitted_state().beta, batched.fitted_state().beta)
    torch.testing.assert_close(
        one.fitted_state().mean_diff, batched.fitted_state().mean_diff, atol=1e-5, rtol=1e-5
    )


# ----- selection -------------------------------------------------------------------------
def hand_state(k: int, variant: str = "momentum", **kw: Any) -> AUSteer:
    """An AUSteer on the tiny Llama residual stream [3, 32] with beta and mean_diff by hand."""
    model = make_tiny("llama")
    au = AUSteer("residual", k=k, alpha=2.0, variant=variant, progress=False, **kw)  # type: ignore[arg-type]
    au._remember_model(model, 4)
    beta = torch.zeros(3, 32)
    beta[2, 0], beta[0, 5], beta[1, 3], beta[0, 7], beta[1, 0] = 0.5, -0.5, 0.5, 0.25, -0.25
    mean_diff = torch.zeros(3, 32)
    mean_diff[2, 9], mean_diff[0, 1] = -3.0, 2.0
    au._load_tensors({"beta": beta, "mean_diff": mean_diff})
    return au


@pytest.mark.parametrize(
    "k, expected",
    [
        (1, [(0, 5)]),
        (2, [(0, 5), (1, 3)]),  # |beta| ties go to the lower layer
        (3, [(0, 5), (1, 3), (2, 0)]),
        (5, [(0, 5), (1, 3), (2, 0), (0, 7), (1, 0)]),
        (7, [(0, 5), (1, 3), (2, 0), (0, 7), (1, 0), (0, 0), (0, 1)]),  # then zeros, in order
    ],
)
def test_global_top_k_with_ties_across_layers(k: int, expected: list[tuple[int, int]]) -> None:
    layers, dims = hand_state(k).selected_units()
    assert list(zip(layers.tolist(), dims.tolist())) == expected


def test_variants_select_and_scale_as_specified() -> None:
    diff = hand_state(2, "diff")
    assert list(zip(*(t.tolist() for t in diff.selected_units()))) == [(2, 9), (0, 1)]
    assert diff.unit_factors().tolist() == [1.0, 1.0]  # beta of those units is 0
    fixed = hand_state(5, "fixed_strength")
    assert fixed.unit_factors().tolist() == [-1.0, 3.0, 3.0, 3.0, -1.0]  # 1 + 2 * sign(beta)
    plain = hand_state(5)
    assert plain.unit_factors().tolist() == [0.0, 2.0, 2.0, 1.5, 0.5]  # 1 + 2 * beta
    randoms = [hand_state(10, "random", seed=s).selected_units() for s in (0, 0, 1)]
    flat = [(layer * 32 + dim).tolist() for layer, dim in randoms]
    assert flat[0] == flat[1] != flat[2]  # seeded
    assert len(set(flat[0])) == 10 and all(0 <= u < 96 for u in flat[0])  # exactly k units


def test_one_fit_serves_every_k_alpha_and_variant() -> None:
    model, au = fitted("llama", "hidden")
    key = au.fit_key(model, PAIRS)
    for change in (
        {"k": 1},
        {"alpha": 100.0},
        {"variant": "random", "seed": 3},
        {"variant": "diff"},
    ):
        assert au.with_params(**change).fit_key(model, PAIRS) == key
        assert au.with_params(**change).fitted_state() is au.fitted_state()
    assert AUSteer("hidden", ties="negative").fit_key(model, PAIRS) != key


# ----- the edit ----------------------------------------------------------------------------
@contextmanager
def calls(model: nn.Module, component: str) -> Iterator[list[dict[int, Tensor]]]:
    """The site of every layer, one dict per forward call, as seen when this hook runs."""
    seen: list[dict[int, Tensor]] = []

    def grab(layer: int, act: Tensor) -> None:
        if layer == 0:
            seen.append({})
        seen[-1][layer] = act.detach().clone()

    hooks = [LayerHook(i, grab) for i in range(model_shape(model).n_layers)]
    with hooked(model, site(architecture_of(model), component), hooks):
        yield seen


def check_edit(
    au: AUSteer, before: dict[int, Tensor], after: dict[int, Tensor], cells: Tensor
) -> None:
    """At `cells` [batch, pos] the selected units are (1 + gamma) * x exactly; everything
    else (other units, other cells, layers without units) is bit-identical."""
    units = by_hand(au)
    for layer, act in before.items():
        expected = act.clone()
        for dim, gamma in units.get(layer, []):
            factor = torch.tensor(1.0 + au.alpha * gamma, dtype=torch.float32).to(act.dtype)
            expected[..., dim][cells] = act[..., dim][cells] * factor
        assert torch.equal(after[layer], expected), f"layer {layer}"
        assert (layer in units) == (not torch.equal(after[layer], act)), f"layer {layer}"


@pytest.mark.parametrize("component", SITE_COMPONENTS)
@pytest.mark.parametrize("padding", ["left", "right", "none"])
def test_edited_units_exact_at_every_position(family: str, component: str, padding: str) -> None:
    model, au = fitted(family, component, alpha=3.0)
    tok = byte_tokenizer()
    prompts, conts = (PROMPTS, CONTS) if padding != "none" else (["The sky is"] * 2, [" blue"] * 2)
    batch = encode(tok, prompts, conts, padding_side="left" if padding == "left" else "right")
    cells = batch.layout.mask("all")
    assert bool(cells.all()) == (padding == "none")
    with calls(model, component) as clean:
        forward(model, batch)
    with calls(model, component) as before:
        with au.apply(model) as handle:
            handle.set_layout(batch.layout)
            with calls(model, component) as after:
                forward(model, batch)
    check_edit(au, before[0], after[0], cells)
    first = min(au.selected_layers())
    for layer in range(first + 1):  # nothing upstream of the first edited layer moves
        assert torch.equal(before[0][layer], clean[0][layer])


@pytest.mark.parametrize("component", SITE_COMPONENTS)
def test_generated_tokens_are_edited_through_the_kv_cache(family: str, component: str) -> None:
    model, au = fitted(family, component, alpha=3.0)
    tok = byte_tokenizer()
    tok.padding_side = "left"
    enc = tok(["The sky is", "Hi"], return_tensors="pt", padding=True)
    tok.padding_side = "right"
    with calls(model, component) as before:
        with au.apply(model):
            with calls(model, component) as after:
                with torch.no_grad():
                    model.generate(
                        **enc, max_new_tokens=4, do_sample=False, pad_token_id=0, use_cache=True
                    )
    assert len(before) == len(after) == 4  # the prefill, then 3 steps with the KV cache
    assert before[1][0].shape[1] == 1  # a decode step sees one new token per row
    check_edit(au, before[0], after[0], enc["attention_mask"].bool())  # real prompt cells
    for b, a in zip(before[1:], after[1:]):
        check_edit(au, b, a, torch.ones(2, 1, dtype=torch.bool))  # every generated token


def test_negative_beta_with_large_alpha_flips_the_sign() -> None:
    """The docstring's warning, shown: alpha * |beta| > 1 on a negative-beta unit."""
    model, au = fitted("llama", "residual", alpha=10.0)
    beta = au.fitted_state().beta[au.selected_units()]
    factors = au.unit_factors()
    negative = beta < -0.1
    assert bool(negative.any()) and bool((factors[negative] < 0).all())


# ----- architectures beyond the seven tiny families ---------------------------------------
@pytest.mark.parametrize("family", ["gemma2", "qwen3", "gemma3"])
def test_the_authors_other_architectures_at_every_site(family: str) -> None:
    """Gemma 2 and Qwen 3 (the paper's other backbones; `MORE_TINY` in conftest) steer at
    every site; the head site of Gemma is n_heads x head_dim wide (64 here), not d_model."""
    model = make_tiny(family)
    shape = model_shape(model)
    assert shape.width("head") == shape.n_heads * shape.head_dim
    if family.startswith("gemma"):
        assert shape.width("head") == 64 != shape.d_model
    batch = encode(byte_tokenizer(), PROMPTS, CONTS)
    for component in SITE_COMPONENTS:
        au = AUSteer(component, k=5, alpha=3.0, progress=False).fit(model, byte_tokenizer(), PAIRS)
        assert au.fitted_state().beta.shape == (3, shape.width(component))
        assert not torch.equal(steered(model, au, batch), forward(model, batch))


# ----- bad input ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"k": 0}, r"k must be a positive integer, got 0; e.g. intervention.k=16 \(AUSteer"),
        ({"k": -3}, r"k must be a positive integer, got -3.*at most n_layers x width of the site"),
        ({"k": True}, r"k must be a positive integer, got True"),
        ({"k": 2.5}, r"k must be a positive integer, got 2.5"),
        ({"alpha": float("nan")}, "alpha must be a finite number, got nan"),
        ({"alpha": float("inf")}, "alpha must be a finite number, got inf"),
        ({"variant": "topk"}, r"variant must be one of \['momentum', .*got 'topk'"),
        ({"ties": "zero"}, r"ties must be one of \['positive', 'negative'\], got 'zero'; positive"),
        ({"component": "heads"}, r"unknown component 'heads'; choose one of \["),
    ],
)
def test_bad_hyperparameters_name_the_value_and_the_fix(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        AUSteer(**kwargs)


def test_k_larger_than_the_units_and_too_few_pairs() -> None:
    model = make_tiny("llama")  # residual: 3 layers x 32
    with pytest.raises(ValueError, match=r"k=97 exceeds the 96 atomic units .* 1 <= k <= 96"):
        AUSteer("residual", k=97, progress=False).fit(model, byte_tokenizer(), PAIRS)
    au = AUSteer("residual", k=96, progress=False).fit(model, byte_tokenizer(), PAIRS)
    assert au.selected_units()[0].numel() == 96
    with pytest.raises(ValueError, match=r"k=200 exceeds the 96 atomic units"):
        au.with_params(k=200)
    with pytest.raises(ValueError, match=r"got 1 contrastive pair\(s\), need at least 2"):
        AUSteer("residual", progress=False).fit(model, byte_tokenizer(), PAIRS[:1])


def test_a_site_the_architecture_lacks() -> None:
    model = make_tiny("llama")
    del model.model.layers[2].mlp.act_fn
    with pytest.raises(ValueError, match=r"component 'neuron' is not available .* another comp"):
        AUSteer("neuron", progress=False).fit(model, byte_tokenizer(), PAIRS)


# ----- end to end on the embedded model ------------------------------------------------------
@pytest.mark.slow
def test_run_and_sadi_lm_eval_on_smollm2_copa(tmp_path: Path) -> None:
    """`python -m sadi.run intervention=austeer` on SmolLM2 / COPA, then `sadi-lm-eval` with
    the saved steerer gives the run's steered select scores."""
    overrides = [
        "intervention=austeer",
        "component=hidden",
        "intervention.k=16",
        "intervention.alpha=20",
        "task.n_pairs=24",
    ]
    out, results = run_then_lm_eval(tmp_path, overrides)
    assert results["n_pairs"] == 24
    assert json.loads((out / "steerer" / "steerer.json").read_text())["method"] == "austeer"
