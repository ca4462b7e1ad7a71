"""CAA on tiny random models of every architecture: exact arithmetic, positions, the read
offset, normalisation, a layer sweep on one fit, errors, parity with steering-vectors.

What every method owes (hooks, identity, determinism, save / load, `with_params`, batching,
scoring = generation) is checked in `test_contract.py` on CAA's default positions
("response"); the tests here add positions="all" where it takes another code path."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from steering_vectors import SteeringVector, train_steering_vector
from torch import Tensor, nn

from sadi.core.activations import encode, join_completion
from sadi.core.architectures import model_shape
from sadi.data.pairs import Pair
from sadi.steerers import Steerer
from sadi.steerers.caa import CAA, CAAState
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

POSITIONS = ["response", "all"]


_FITS: dict[tuple[str, int], tuple[nn.Module, CAA]] = {}


def fitted(family: str, read_offset: int = 0, **kw: object) -> tuple[nn.Module, CAA]:
    """A tiny model and a CAA fitted on it (one fit per family and offset, then with_params)."""
    key = (family, read_offset)
    if key not in _FITS:
        model = make_tiny(family)
        caa = CAA(layer=1, multiplier=2.0, read_offset=read_offset, progress=False)
        _FITS[key] = (model, caa.fit(model, byte_tokenizer(), PAIRS))
    model, caa = _FITS[key]
    return model, caa.with_params(**kw)


@pytest.mark.parametrize("positions", POSITIONS)
def test_edited_cells_equal_output_plus_vector(family: str, positions: str) -> None:
    model, caa = fitted(family, multiplier=-1.5, positions=positions)
    batch = encode(byte_tokenizer(), PROMPTS, CONTS, padding_side="left")
    mask = batch.layout.mask(positions)  # type: ignore[arg-type]
    with recording(model, "residual") as clean:
        forward(model, batch)
    # `before` sees each layer's live output in the steered pass before the edit, `after` after
    with recording(model, "residual") as before:
        with caa.apply(model) as handle:
            handle.set_layout(batch.layout)
            with recording(model, "residual") as after:
                forward(model, batch)
    delta = -1.5 * caa.fitted_state().vectors[1]
    for layer in range(model_shape(model).n_layers):
        expected = before[layer].clone()
        if layer == 1:
            expected[mask] = before[layer][mask] + delta
            assert not torch.equal(after[layer], before[layer])
        assert torch.equal(after[layer], expected), f"layer {layer}"
    assert torch.equal(before[0], clean[0]) and torch.equal(before[1], clean[1])
    # real cells before the edit are not affected downstream either (pad cells may be: some
    # models let fully masked pad rows attend everywhere)
    untouched = batch.layout.mask("all") & ~mask
    assert torch.equal(after[2][untouched], clean[2][untouched])


def test_prompt_untouched_before_its_last_token_under_response(family: str) -> None:
    """Every prompt position before the last is the unsteered one; from the last prompt
    token on (it predicts the first continuation token) the logits move."""
    model, caa = fitted(family, multiplier=4.0)
    batch = encode(byte_tokenizer(), PROMPTS, CONTS)
    base, steer = forward(model, batch), steered(model, caa, batch)
    for row, p in enumerate(batch.layout.prompt_lengths.tolist()):
        n = int(batch.layout.seq_lengths[row])
        assert torch.equal(steer[row, : p - 1], base[row, : p - 1])
        assert not torch.equal(steer[row, p - 1], base[row, p - 1])
        assert not torch.equal(steer[row, p:n], base[row, p:n])


def test_old_continuation_name_reads_as_response() -> None:
    with pytest.warns(UserWarning, match="read as 'response'"):
        caa = CAA(positions="continuation")  # type: ignore[arg-type]
    assert caa.positions == caa.edit_policy == "response"


def test_all_positions_left_and_right_padding_equal_one_by_one(family: str) -> None:
    """positions="all" edits every real token, none of the pads, wherever they are."""
    model, caa = fitted(family, multiplier=3.0, positions="all")
    assert_padding_free(model, caa, byte_tokenizer())


@pytest.mark.parametrize("positions", POSITIONS)
def test_generate_edits_generated_tokens(family: str, positions: str) -> None:
    """Decode steps are edited; in the prefill the last token (it produces the first new
    token) under "response", every real token under "all"."""
    model, caa = fitted(family, multiplier=3.0, positions=positions)
    batch = encode(byte_tokenizer(), ["Hello there", "Hi"], padding_side="left")
    edited: list[tuple[int, int]] = []
    fn = caa._edit_fns(model)[1]

    def spy(layer: int, act: Tensor, rows: Tensor, pos: Tensor) -> Tensor:
        edited.append((int(act.shape[1]), int(rows.numel())))
        return fn(layer, act, rows, pos)

    caa._edit_fns = lambda m: {1: spy}  # type: ignore[method-assign]
    kwargs = dict(max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=0)
    with torch.no_grad(), caa.apply(model):
        out = model.generate(batch.input_ids, attention_mask=batch.attention_mask, **kwargs)
    prefill = [(batch.input_ids.shape[1], int(batch.attention_mask.sum()))]
    last = [(batch.input_ids.shape[1], 2)]
    assert edited == (prefill if positions == "all" else last) + [(1, 2), (1, 2)]
    assert out.shape == (2, batch.input_ids.shape[1] + 3)


def test_fit_reads_the_offset_token(family: str) -> None:
    """The vectors are the mean differences of the residual stream at the read offset,
    recomputed from single-row forwards."""
    read_offset = -1  # the authors' token -2; offset 0 is covered by the parity tests
    model, a = fitted(family, read_offset=read_offset)
    tok = byte_tokenizer()
    diffs = []
    for p in PAIRS:  # independent recomputation from single-row forwards
        acts = []
        for completion in (p.positive, p.negative):
            with recording(model, "residual") as seen:
                forward(model, encode(tok, [p.prompt], [completion]))
            acts.append(torch.stack([seen[i][0, read_offset - 1] for i in sorted(seen)]))
        diffs.append(acts[0] - acts[1])
    vectors = a.fitted_state().vectors
    assert vectors.shape == (3, 32) and vectors.dtype == torch.float32
    torch.testing.assert_close(vectors, torch.stack(diffs).mean(0), atol=1e-5, rtol=1e-5)


def test_normalize_equalises_layer_norms_to_their_mean() -> None:
    model, raw = fitted("qwen2")
    norm = raw.with_params(normalize=True)
    assert norm.state is raw.state  # normalisation acts at steering time
    r, n = raw.steering_vectors(), norm.steering_vectors()
    target = r.norm(dim=1).mean()
    torch.testing.assert_close(n.norm(dim=1), target.expand(3), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        torch.nn.functional.cosine_similarity(n, r, dim=1), torch.ones(3), atol=1e-6, rtol=0
    )
    assert torch.equal(norm.vector(), n[1])
    zero = CAA(layer=0, normalize=True)
    zero.state = CAAState(vectors=torch.cat([torch.zeros(1, 32), r[1:]]))
    assert torch.equal(zero.steering_vectors()[0], torch.zeros(32))


def test_with_params_serves_a_layer_sweep() -> None:
    model, caa = fitted("llama", layer=0)
    batch = encode(byte_tokenizer(), PROMPTS, CONTS)
    moved = caa.with_params(layer=2, multiplier=-1.0)
    assert moved.fitted_state() is caa.fitted_state() and (moved.layer, caa.layer) == (2, 0)
    direct = CAA(layer=2, multiplier=-1.0, progress=False).fit(model, byte_tokenizer(), PAIRS)
    assert torch.equal(steered(model, moved, batch), steered(model, direct, batch))
    with pytest.raises(ValueError, match="layer=3 is out of range: the model has 3"):
        caa.with_params(layer=3)


def test_artifact_restores_positions_normalize_and_offset(tmp_path: Path) -> None:
    """Loaded, a CAA edits where it was saved to (positions="all": every token, generated
    ones included), normalised, and steerer.json records layer and read offset."""
    model, caa = fitted("gemma3", normalize=True, positions="all", read_offset=-1)
    caa.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"steerer.safetensors", "steerer.json"}
    loaded = Steerer.load(tmp_path, model)
    assert isinstance(loaded, CAA) and loaded.normalize
    assert loaded.edit_policy == "all" and loaded.edit_generated
    assert torch.equal(loaded.steering_vectors(), caa.steering_vectors())
    meta = json.loads((tmp_path / "steerer.json").read_text())
    assert meta["method"] == "caa" and meta["component"] == "residual"
    assert meta["layer"] == 1 and meta["read_offset"] == -1 and meta["n_pairs"] == len(PAIRS)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(multiplier=math.inf), "multiplier must be a finite number, got inf"),
        (dict(multiplier=float("nan")), "multiplier must be a finite number"),
        (dict(positions="last_prompt"), "positions must be one of .*'response', 'all'"),
        (dict(component="head"), r"CAA steers \['residual'\], got component='head'"),
        (dict(component="attention"), "unknown component 'attention'"),
        (dict(layer=-1), "layer must be a non-negative integer"),
        (dict(layer=1.5), "layer must be a non-negative integer"),
        (dict(read_offset=1), "read_offset must be an integer <= 0"),
        (dict(normalize="yes"), "normalize must be true or false"),
    ],
)
def test_bad_hyperparameters(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CAA(**kwargs)


def test_layer_out_of_range_at_fit_apply_and_load(tmp_path: Path) -> None:
    model, caa = fitted("llama")
    with pytest.raises(ValueError, match=r"layer=3 is out of range.*0 <= layer <= 2"):
        CAA(layer=3, progress=False).fit(model, byte_tokenizer(), PAIRS)
    caa.save(tmp_path)
    meta = json.loads((tmp_path / "steerer.json").read_text())
    (tmp_path / "steerer.json").write_text(json.dumps({**meta, "layer": 7}))
    with pytest.raises(ValueError, match="layer=7 is out of range: the model has 3"):
        Steerer.load(tmp_path, model)
    caa.layer = 5
    n0 = count_hooks(model)
    with pytest.raises(ValueError, match="layer=5 is out of range: the model has 3"):
        with caa.apply(model):
            pass
    assert count_hooks(model) == n0


def test_bad_pairs() -> None:
    model = make_tiny("llama")
    tok = byte_tokenizer()
    with pytest.raises(ValueError, match="no contrastive pairs"):
        CAA(layer=1, progress=False).fit(model, tok, [])
    with pytest.raises(ValueError, match="pair 1 .*positive == negative"):
        CAA(layer=1, progress=False).fit(model, tok, [PAIRS[0], Pair("Q", " a", " a", "x")])
    with pytest.raises(ValueError, match="offset -20 reaches before the start"):
        CAA(layer=1, read_offset=-20, progress=False).fit(model, tok, PAIRS)
    with pytest.raises(RuntimeError, match="CAA is not fitted"):
        CAA(layer=1).vector()


# ----- parity with steering-vectors 0.12.2 -------------------------------------------------
def sv_samples(pairs: list[Pair]) -> list[tuple[str, str]]:
    """The texts sadi reads, as steering-vectors (pos, neg) samples."""
    return [
        (
            p.prompt + join_completion(p.prompt, p.positive),
            p.prompt + join_completion(p.prompt, p.negative),
        )
        for p in pairs
    ]


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("read_offset", [0, -1])
def test_vectors_equal_steering_vectors(family: str, read_offset: int) -> None:
    model, caa = fitted(family, read_offset=read_offset)
    sv = train_steering_vector(
        model, byte_tokenizer(), sv_samples(PAIRS), read_token_index=read_offset - 1
    )
    vectors = caa.fitted_state().vectors
    assert sorted(sv.layer_activations) == list(range(vectors.shape[0]))
    for layer, theirs in sv.layer_activations.items():
        torch.testing.assert_close(vectors[layer], theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("positions", POSITIONS)
def test_steered_logits_equal_steering_vectors(family: str, positions: str) -> None:
    """Same vector (equal to theirs, see above), same edit: same logits."""
    model, caa = fitted(family, multiplier=-2.5, positions=positions)
    sv = SteeringVector({1: caa.fitted_state().vectors[1]})
    for prompt, cont in zip(PROMPTS, CONTS):
        batch = encode(byte_tokenizer(), [prompt], [cont])
        first = int(batch.layout.prompt_lengths[0]) - 1 if positions == "response" else 0
        ours = steered(model, caa, batch)
        with sv.apply(model, multiplier=-2.5, min_token_index=first), torch.no_grad():
            theirs = model(batch.input_ids).logits
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(ours, forward(model, batch), atol=1e-3)


def test_controls_are_norm_matched_and_pca_is_the_first_component() -> None:
    """direction=pca is sklearn's first principal component of the pair differences,
    direction=random a seeded direction; both have the mean difference's norm per layer and
    point along it; consistency is the mean cosine of the differences to their mean."""
    from sklearn.decomposition import PCA

    from sadi.steerers.caa import control_direction, pair_consistency

    g = torch.Generator().manual_seed(0)
    diffs = torch.randn(20, 3, 16, generator=g) + torch.linspace(-1, 2, 16)  # [pairs, L, d]
    mean = diffs.mean(0)
    pca = control_direction(diffs, mean, "pca", 0)
    rnd = control_direction(diffs, mean, "random", 0)
    for v in (pca, rnd):
        torch.testing.assert_close(v.norm(dim=-1), mean.norm(dim=-1))
        assert bool(((v * mean).sum(-1) > 0).all())
    for layer in range(3):
        pc = torch.tensor(PCA(n_components=1).fit(diffs[:, layer].numpy()).components_[0])
        cos = torch.nn.functional.cosine_similarity(pca[layer], pc.float(), dim=0)
        assert abs(float(cos)) > 1 - 1e-5
    assert torch.equal(rnd, control_direction(diffs, mean, "random", 0))
    assert not torch.equal(rnd, control_direction(diffs, mean, "random", 1))
    same = torch.ones(5, 2, 4)
    torch.testing.assert_close(pair_consistency(same, same.mean(0)), torch.ones(2))
    expected = torch.stack(
        [
            torch.nn.functional.cosine_similarity(diffs[:, layer], mean[layer][None], dim=-1).mean()
            for layer in range(3)
        ]
    )
    torch.testing.assert_close(pair_consistency(diffs, mean), expected)


def test_a_fit_records_consistency_and_the_control_direction(tmp_path: Path) -> None:
    model, tok = make_tiny("llama"), byte_tokenizer()
    caa = CAA(layer=1, progress=False).fit(model, tok, list(PAIRS))
    rnd = CAA(layer=1, direction="random", progress=False).fit(model, tok, list(PAIRS))
    assert len(caa.consistency) == 3 and all(-1 <= c <= 1 for c in caa.consistency)
    assert rnd.consistency == caa.consistency  # a property of the pairs, not the direction
    a, b = caa.fitted_state().vectors, rnd.fitted_state().vectors
    torch.testing.assert_close(a.norm(dim=-1), b.norm(dim=-1))
    assert not torch.allclose(a, b)
    caa.save(tmp_path / "s")
    assert CAA.load(tmp_path / "s", model).consistency == caa.consistency
    with pytest.raises(ValueError, match="direction"):
        CAA(direction="median")  # type: ignore[arg-type]
