"""CAA vectors in the format of lm-eval's built-in `steered` model, and parity with it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.hf_steered import SteeredModel
from torch import Tensor, nn

from sadi.core.activations import encode
from sadi.core.architectures import decoder_layers
from sadi.eval.interop import (
    base_model_path,
    export_lm_eval_steer,
    import_lm_eval_steer,
    layers_hookpath,
    lm_eval_hookpoint,
)
from sadi.eval.lm import SteeredLM
from sadi.steerers import FingerprintMismatch
from sadi.steerers.caa import CAA
from tests.conftest import PAIRS, byte_tokenizer, make_tiny
from tests.helpers import loglikelihood_requests

CONTEXTS = ["The sky is", "Two plus two is", "A", "Water is wet and the sea is", "Q: hot?\nA:"]
CONTINUATIONS = [" blue", " four", " yes", "!"]
PROMPTS = ["The sky is", "Water is wet and", "Hi"]
HOOKPOINTS = {
    "llama": "layers.1",
    "mistral": "layers.1",
    "qwen2": "layers.1",
    "gemma3": "layers.1",
    "gpt2": "h.1",
    "bloom": "h.1",
    "falcon": "h.1",
}


def fitted(family: str, **kw: object) -> tuple[nn.Module, CAA]:
    model = make_tiny(family)
    kw = {"layer": 1, "multiplier": 2.5, "positions": "all", **kw}
    return model, CAA(progress=False, **kw).fit(model, byte_tokenizer(), PAIRS)  # type: ignore[arg-type]


def logits(model: nn.Module, caa: CAA | None = None) -> Tensor:
    batch = encode(byte_tokenizer(), PROMPTS, padding_side="right")
    with torch.no_grad():
        if caa is None:
            return model(batch.input_ids, attention_mask=batch.attention_mask).logits
        with caa.apply(model):
            return model(batch.input_ids, attention_mask=batch.attention_mask).logits


def test_hookpoint_is_the_decoder_layer_relative_to_base_model(family: str) -> None:
    model = make_tiny(family)
    hookpoint = lm_eval_hookpoint(model, 1)
    assert hookpoint == HOOKPOINTS[family]
    assert base_model_path(model) in ("model", "transformer")
    assert layers_hookpath(model) == hookpoint.rsplit(".", 1)[0]
    assert dict(model.base_model.named_modules())[hookpoint] is decoder_layers(model)[1]


@pytest.mark.parametrize("normalize", [False, True])
def test_export_import_round_trip(tmp_path: Path, normalize: bool) -> None:
    model, caa = fitted("qwen2", normalize=normalize)
    path = export_lm_eval_steer(caa, model, tmp_path / "caa.pt")
    (hookpoint, entry), *rest = torch.load(path, weights_only=True).items()
    assert not rest and hookpoint == "layers.1"
    assert entry["action"] == "add" and entry["bias"] is None and entry["head_index"] is None
    assert entry["steering_coefficient"] == 2.5
    vector = entry["steering_vector"]
    assert vector.shape == (32,) and vector.dtype == torch.float32
    assert torch.equal(vector, caa.vector())
    back = import_lm_eval_steer(path, model)
    assert (back.layer, back.multiplier, back.positions, back.normalize) == (1, 2.5, "all", False)
    assert torch.equal(back.vector(), caa.vector())
    assert not back.fitted_state().vectors[[0, 2]].any()  # the file holds one layer
    assert torch.equal(logits(model, back), logits(model, caa))
    again = export_lm_eval_steer(back, model, tmp_path / "again.pth")
    assert torch.equal(torch.load(again, weights_only=True)["layers.1"]["steering_vector"], vector)


def requests() -> list[Instance]:
    return loglikelihood_requests(
        [(c, k) for c in CONTEXTS for k in CONTINUATIONS[: 2 + len(c) % 3]]
    )


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_lm_eval_steered_model_equals_sadi_model(tmp_path: Path, family: str) -> None:
    """lm-eval's own `steered` model on the exported file = the sadi model on the CAA."""
    model, caa = fitted(family)
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    byte_tokenizer().save_pretrained(model_dir)
    steer_path = export_lm_eval_steer(caa, model, tmp_path / "caa.pt")
    theirs = SteeredModel(
        pretrained=str(model_dir), steer_path=str(steer_path), device="cpu", batch_size=4
    )
    ours = SteeredLM(model, steerer=caa, tokenizer=byte_tokenizer(), device="cpu", batch_size=4)
    plain = SteeredLM(model, tokenizer=byte_tokenizer(), device="cpu", batch_size=4)
    reqs = requests()
    assert len(reqs) >= 10
    got = torch.tensor([ll for ll, _ in ours.loglikelihood(reqs, disable_tqdm=True)])
    want = torch.tensor([ll for ll, _ in theirs.loglikelihood(reqs, disable_tqdm=True)])
    base = torch.tensor([ll for ll, _ in plain.loglikelihood(reqs, disable_tqdm=True)])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert not torch.allclose(got, base, atol=1e-3)


def test_export_refusals(tmp_path: Path) -> None:
    model, caa = fitted("llama", positions="response")
    with pytest.raises(ValueError, match="positions='response'.*with_params"):
        export_lm_eval_steer(caa, model, tmp_path / "caa.pt")
    with pytest.raises(ValueError, match=r"only from \('.pt', '.pth'\) files.*'caa.pt'"):
        export_lm_eval_steer(caa.with_params(positions="all"), model, tmp_path / "caa.safetensors")
    with pytest.raises(FingerprintMismatch):
        export_lm_eval_steer(caa.with_params(positions="all"), make_tiny("gpt2"), tmp_path / "x.pt")
    assert not list(tmp_path.iterdir())


class Payload:
    """Unpickling this calls print: what weights_only=True must refuse to do."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("UNPICKLED",))


def entry(**kw: object) -> dict[str, object]:
    return {
        "action": "add",
        "steering_vector": torch.ones(32),
        "steering_coefficient": 1.0,
        "bias": None,
        "head_index": None,
        **kw,
    }


@pytest.mark.parametrize(
    "content, match",
    [
        ({"layers.0": entry(), "layers.1": entry()}, "steers 2 hookpoints"),
        ({}, "is not a {hookpoint: settings} dict"),
        ({"layers.1": entry(action="clamp")}, "action 'clamp'; only 'add'"),
        ({"layers.1": entry(head_index=2)}, "head_index=2.*must be None"),
        ({"layers.1": entry(bias=torch.zeros(32))}, "bias=.*must be None"),
        ({"layers.1.mlp": entry()}, r"'layers.1.mlp' is not a decoder layer.*'layers.<n>'"),
        ({"layers.3": entry()}, r"'layers.3' is not a decoder layer.*0 <= n <= 2"),
        ({"h.1": entry()}, "'h.1' is not a decoder layer"),
        ({"layers.1": entry(steering_vector=torch.ones(2, 32))}, r"shape \[32\] or \[1, 32\]"),
        ({"layers.1": entry(steering_vector=[1.0] * 32)}, "must be a tensor.*got list"),
        ({"layers.1": entry(steering_coefficient=math.inf)}, "steering_coefficient must be"),
        ({"layers.1": entry(steering_vector=Payload())}, "refusing to unpickle"),
    ],
)
def test_import_refusals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: dict, match: str
) -> None:
    model = make_tiny("llama")
    path = tmp_path / "steer.pt"
    torch.save(content, path)
    with pytest.raises(ValueError, match=match):
        import_lm_eval_steer(path, model)
    assert "UNPICKLED" not in capsys.readouterr().out


def test_import_accepts_a_row_vector_and_default_coefficient(tmp_path: Path) -> None:
    model = make_tiny("gpt2")
    vector = torch.randn(1, 32, dtype=torch.float64)
    path = tmp_path / "steer.pt"
    settings = {"action": "add", "steering_vector": vector}  # lm-eval defaults the rest
    torch.save({"h.2": settings}, path)
    caa = import_lm_eval_steer(path, model, positions="response")
    assert (caa.layer, caa.multiplier, caa.positions) == (2, 1.0, "response")
    assert torch.equal(caa.vector(), vector[0].float())
