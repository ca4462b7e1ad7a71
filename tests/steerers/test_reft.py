"""LoReFT's arithmetic, checked by hand on a tiny model: at the edited cell the layer output
becomes h + s R^T(W h + b - R h) (so at s = 1, R h' = W h + b and nothing outside R's row
space moves), every other cell is untouched, R keeps orthonormal rows through training, and
training lowers the completion loss."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from sadi.core.architectures import decoder_layers
from sadi.steerers.reft import LoReFT
from tests.conftest import PAIRS, byte_tokenizer, make_tiny


def layer_output(model: torch.nn.Module, layer: int, ids: dict) -> tuple[Tensor, Tensor]:
    """(the layer's output [batch, pos, d], the logits) of one forward."""
    seen: list[Tensor] = []
    hook = decoder_layers(model)[layer].register_forward_hook(
        lambda m, a, out: seen.append((out[0] if isinstance(out, tuple) else out).detach())
    )
    try:
        with torch.no_grad():
            logits = model(**ids).logits
    finally:
        hook.remove()
    return seen[0], logits


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_the_edit_is_loreft_at_the_last_prompt_token(family: str, strength: float) -> None:
    model, tok = make_tiny(family), byte_tokenizer()
    reft = LoReFT(layer=1, rank=3, epochs=4, lr=1e-2, progress=False).fit(model, tok, list(PAIRS))
    assert reft.losses[-1] < reft.losses[0]
    state = reft.fitted_state()
    r, w, b = state.rotation, state.weight, state.bias
    torch.testing.assert_close(r @ r.T, torch.eye(3), atol=1e-5, rtol=0)  # orthonormal rows
    ids = tok(["The sky is", "Water is wet and"], return_tensors="pt", padding=True)
    last = ids["attention_mask"].sum(1) - 1  # right padding: each row's last prompt token
    h, _ = layer_output(model, 1, ids)
    with reft.with_params(strength=strength).apply(model):
        steered, _ = layer_output(model, 1, ids)
    for row in range(2):
        hr = h[row, last[row]]
        expected = hr + strength * (r.T @ (w @ hr + b - r @ hr))  # by hand
        torch.testing.assert_close(steered[row, last[row]], expected, atol=1e-5, rtol=1e-5)
        if strength == 1.0:  # the projection onto R's rows is replaced by W h + b ...
            torch.testing.assert_close(r @ steered[row, last[row]], w @ hr + b, atol=1e-4, rtol=0)
        # ... and nothing outside R's row space moves
        moved = steered[row, last[row]] - hr
        torch.testing.assert_close(
            moved - r.T @ (r @ moved), torch.zeros_like(moved), atol=1e-5, rtol=0
        )
        others = [p for p in range(h.shape[1]) if p != int(last[row])]
        assert torch.equal(steered[row, others], h[row, others])


def test_bad_values_are_named() -> None:
    with pytest.raises(ValueError, match="positions"):
        LoReFT(positions="first")  # type: ignore[arg-type]
    model, tok = make_tiny("llama"), byte_tokenizer()
    with pytest.raises(ValueError, match="layer=9 is out of range"):
        LoReFT(layer=9, progress=False).fit(model, tok, list(PAIRS))
    reft = LoReFT(layer=1, rank=2, epochs=1, progress=False).fit(model, tok, list(PAIRS))
    tensors = reft.tensors()
    tensors["rotation"] = tensors["rotation"] * 2
    with pytest.raises(ValueError, match="not orthonormal"):
        LoReFT(layer=1, rank=2)._load_tensors(tensors)
