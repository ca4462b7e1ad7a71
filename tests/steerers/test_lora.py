"""LoRA: the hooks compute what peft's own LoRA layers compute (the saved `peft/` adapter
loaded by `PeftModel.from_pretrained` gives the same logits), training lowers the completion
loss and leaves the model's weights as they were, and the artifact round-trips."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from sadi.core.fingerprints import weights_fingerprint
from sadi.steerers import Steerer
from sadi.steerers.lora import LoRA, target_modules
from tests.conftest import PAIRS, byte_tokenizer, make_tiny


@pytest.mark.parametrize("family", ["llama", "gpt2", "falcon"])
@pytest.mark.parametrize("component", ["head", "neuron"])
def test_apply_equals_peft_on_the_saved_adapter(
    family: str, component: str, tmp_path: Path
) -> None:
    model, tok = make_tiny(family), byte_tokenizer()
    before = weights_fingerprint(model)
    lora = LoRA(component, rank=4, epochs=3, lr=1e-2, progress=False).fit(model, tok, list(PAIRS))
    assert lora.losses[-1] < lora.losses[0]  # it learns the positive completions
    assert weights_fingerprint(model) == before  # the model's weights never change
    lora.save(tmp_path / "steerer")
    config = json.loads((tmp_path / "steerer" / "peft" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 16
    assert sorted(config["target_modules"]) == sorted(target_modules(model, component))
    ids = tok(["The sky is blue", "Hi there"], return_tensors="pt", padding=True)
    with torch.no_grad():
        plain = model(**ids).logits
        with lora.apply(model):
            ours = model(**ids).logits
        theirs = PeftModel.from_pretrained(copy.deepcopy(model), tmp_path / "steerer" / "peft")(
            **ids
        ).logits
        half = lora.with_params(scale=0.5)
        with half.apply(model):
            halfway = model(**ids).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert float((ours - plain).abs().max()) > 1e-2
    assert not torch.equal(halfway, ours) and not torch.equal(halfway, plain)
    loaded = Steerer.load(tmp_path / "steerer", model)
    assert isinstance(loaded, LoRA) and loaded.fan_in_fan_out == (family == "gpt2")
    with torch.no_grad(), loaded.apply(model):
        torch.testing.assert_close(model(**ids).logits, ours, atol=0, rtol=0)


def test_a_damaged_adapter_is_refused(tmp_path: Path) -> None:
    model, tok = make_tiny("llama"), byte_tokenizer()
    lora = LoRA("head", rank=2, epochs=1, progress=False).fit(model, tok, list(PAIRS))
    name, (a, b) = next(iter(lora.fitted_state().adapters.items()))
    tensors = lora.tensors()
    del tensors[f"{name}.lora_B"]
    with pytest.raises(ValueError, match="one lora_A and one lora_B"):
        LoRA("head", rank=2)._load_tensors(tensors)
    with pytest.raises(ValueError, match="not of rank 3"):
        LoRA("head", rank=3)._load_tensors(lora.tensors())
    with pytest.raises(ValueError, match="lr=0"):
        LoRA("head", lr=0)


def test_the_training_batch_keys_the_fit() -> None:
    """SGD batches change what is trained: train_batch_size is a hyperparameter in the fit
    key, while the runtime batch_size is not."""
    model = make_tiny("llama")
    key = LoRA("head").fit_key(model, list(PAIRS))
    assert LoRA("head", train_batch_size=4).fit_key(model, list(PAIRS)) != key
    assert LoRA("head", batch_size=3).fit_key(model, list(PAIRS)) == key
