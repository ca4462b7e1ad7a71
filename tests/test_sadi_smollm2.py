"""SADI end to end on the embedded pretrained SmolLM2 (slow)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sadi.core.activations import encode, position_ids
from sadi.data.pairs import make_pairs
from sadi.data.tasks import load_task
from sadi.steerers import SADI, FingerprintMismatch, Steerer
from tests.conftest import make_tiny

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def copa_pairs() -> list:
    return make_pairs(load_task("copa").splits["fit"], n_pairs=24, seed=0)


def logits(model, batch) -> torch.Tensor:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return model(
            batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=position_ids(batch.attention_mask),
        ).logits


def steered(model, steerer, batch) -> torch.Tensor:  # type: ignore[no-untyped-def]
    with steerer.apply(model) as handle:
        handle.set_layout(batch.layout)
        return logits(model, batch)


@pytest.mark.parametrize("component", ["head", "neuron"])
def test_smollm2_identity_padding_and_round_trip(
    smollm2: tuple, copa_pairs: list, component: str, tmp_path: Path
) -> None:
    model, tok = smollm2
    k = 4 if component == "head" else 50
    sadi = SADI(component, k=k, strength=5.0, progress=False).fit(model, tok, copa_pairs)
    again = SADI(component, k=k, strength=5.0, progress=False).fit(model, tok, copa_pairs)
    assert torch.equal(sadi.fitted_state().delta, again.fitted_state().delta)
    assert torch.equal(sadi.fitted_state().mask, again.fitted_state().mask)

    prompts = [p.prompt for p in copa_pairs[:4]]
    conts = [p.positive for p in copa_pairs[:4]]
    batch = encode(tok, prompts, conts)
    base = logits(model, batch)
    identity = SADI(component, k=k, strength=1.0, progress=False).adopt(sadi)
    assert torch.equal(steered(model, identity, batch), base)

    out = steered(model, sadi, batch)
    _, last = batch.layout.indices("last_prompt")
    for row, p in enumerate(last.tolist()):
        assert torch.equal(out[row, :p], base[row, :p])
    assert not torch.allclose(out, base)

    singles = [steered(model, sadi, encode(tok, [p], [c]))[0] for p, c in zip(prompts, conts)]
    for side in ("left", "right"):
        b = encode(tok, prompts, conts, padding_side=side)
        got = steered(model, sadi, b)
        for row, single in enumerate(singles):
            s = int(b.layout.starts()[row])
            # float32 batching noise is relative: unsteered rows already differ by ~3e-6 of the
            # logit scale between batch shapes, so the bound is 1e-5 of that scale
            scale = float(single.abs().max())
            torch.testing.assert_close(
                got[row, s : s + len(single)], single, atol=1e-5 * scale, rtol=0
            )

    sadi.save(tmp_path)
    loaded = Steerer.load(tmp_path, model)
    assert torch.equal(steered(model, loaded, batch), out)
    with pytest.raises(FingerprintMismatch):
        Steerer.load(tmp_path, make_tiny("llama"))


def test_smollm2_faithful_differs_from_online_only_through_upstream_edits(
    smollm2: tuple, copa_pairs: list
) -> None:
    model, tok = smollm2
    online = SADI("head", k=6, strength=5.0, progress=False).fit(model, tok, copa_pairs)
    faithful = SADI("head", k=6, strength=5.0, mode="faithful", progress=False).adopt(online)
    batch = encode(tok, [p.prompt for p in copa_pairs[:3]], [p.positive for p in copa_pairs[:3]])
    a, b = steered(model, online, batch), steered(model, faithful, batch)
    assert torch.isfinite(b).all()
    if len(online.selected_layers()) > 1:
        assert not torch.allclose(a, b)
