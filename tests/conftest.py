"""Tiny random models of every supported architecture, and a byte-level tokenizer.

`TINY` holds the seven families the `family` fixture runs most tests on; `MORE_TINY` the
architectures beyond them (Gemma 2 and Qwen 3, AUSteer's backbones), which the steerer
contract suite (`tests/steerers/test_contract.py`) covers too. `make_tiny` builds either.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    BloomConfig,
    BloomForCausalLM,
    FalconConfig,
    FalconForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from sadi.data.pairs import Pair

# the vLLM backend's tests run where vLLM is installed (.venv-vllm; `make test` runs them
# there): elsewhere they are not collected at all, rather than reported as skipped
collect_ignore = [] if importlib.util.find_spec("vllm") else ["vllm_backend"]
# llama.cpp's check runs where llama-cpp-python is built (`make test` builds it first)
if importlib.util.find_spec("llama_cpp") is None:
    collect_ignore.append("test_llamacpp.py")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

VOCAB = 260  # 256 bytes + specials
_LLAMA_KW: dict[str, Any] = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)

TINY: dict[str, Callable[[], PreTrainedModel]] = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**_LLAMA_KW)),
    "mistral": lambda: MistralForCausalLM(MistralConfig(**_LLAMA_KW, sliding_window=None)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**_LLAMA_KW)),
    "gemma3": lambda: Gemma3ForCausalLM(
        Gemma3TextConfig(**{**_LLAMA_KW, "num_key_value_heads": 1}, head_dim=16)
    ),
    "gpt2": lambda: GPT2LMHeadModel(
        GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=256)
    ),
    "bloom": lambda: BloomForCausalLM(
        BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=3, n_head=4)
    ),
    "falcon": lambda: FalconForCausalLM(
        FalconConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=256,
        )
    ),
}


# the architectures beyond the seven: built by `make_tiny`, not run by the `family` fixture
MORE_TINY: dict[str, Callable[[], PreTrainedModel]] = {
    "gemma2": lambda: Gemma2ForCausalLM(
        Gemma2Config(**{**_LLAMA_KW, "num_key_value_heads": 1}, head_dim=16)
    ),
    "qwen3": lambda: Qwen3ForCausalLM(Qwen3Config(**_LLAMA_KW, head_dim=8)),
}
ALL_FAMILIES = sorted(TINY) + sorted(MORE_TINY)


def make_tiny(family: str, seed: int = 0) -> PreTrainedModel:
    """The tiny random model of `family` (one of `TINY` or `MORE_TINY`), in eval mode."""
    torch.manual_seed(seed)
    model = {**TINY, **MORE_TINY}[family]()
    # Random init gives near-zero activations; scale weights so edits visibly move logits.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(8.0)
    model.config.name_or_path = f"tiny-{family}"
    model.config.pad_token_id = 0
    return model.eval()


def byte_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2}
    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    for ch in sorted(byte_chars):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
    )
    return fast


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return byte_tokenizer()


@pytest.fixture(params=sorted(TINY))
def family(request: pytest.FixtureRequest) -> str:
    return str(request.param)


PAIRS = [
    Pair("The sky is", " blue", " green", "p0"),
    Pair("Two plus two is", " four", " five", "p1"),
    Pair("Water is", " wet", " dry", "p2"),
    Pair("Fire is", " hot", " cold", "p3"),
    Pair("Snow is", " white", " black", "p4"),
    Pair("The sun rises in the", " east", " west", "p5"),
]


@pytest.fixture
def pairs() -> list[Pair]:
    return list(PAIRS)


@pytest.fixture(scope="session")
def smollm2() -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """The embedded SmolLM2-135M-Instruct (converted once into the sadi cache)."""
    from sadi.core.models import load_model

    return load_model()  # type: ignore[return-value]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> object:
    """A tiny random Llama and the byte tokenizer, saved as a local model directory."""
    path = tmp_path_factory.mktemp("tiny-llama")
    make_tiny("llama").save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path
