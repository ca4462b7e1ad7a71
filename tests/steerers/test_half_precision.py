"""Every method in bfloat16 and float16 (on CPU, the tiny families): it fits on the half
model (statistics in float32, state kept in float32), it steers the half model as the
float32 model is steered, and a steered log-likelihood still equals the log-probability of
teacher-forced generation.

The models: each tiny model's weights are first rounded to the half dtype and kept in
float32 (`rounded`), so the float32 and the half copy hold the same weights exactly (one
weights fingerprint: a steerer fitted on one applies to the other) and differ only in the
arithmetic. Tolerances come from that arithmetic, measured on the same inputs: `own` is
the largest |log-probability difference| between the half and the float32 model unsteered
(the dtype's own rounding through the network: ~5 ulps of bfloat16 here). Steering may add
rounding of its own (its edit is computed and added in the half dtype) but no more than the
network's: a steered half model must be within `SLACK * own + 4 eps` of the steered float32
model, eps the dtype's machine epsilon. A method that kept its tensors or accumulated its
statistics in the half dtype, or dropped an edit's dtype cast, misses this by an order of
magnitude (a bf16 mean of 12 activations alone is off by several ulps).

SAS runs on a ReLU SAE here: a TopK SAE's code is discontinuous in its input (a latent
entering or leaving the top k), so bf16 rounding of one activation can move a steered
log-probability by 6x the network's rounding without any error in sadi (measured: tiny
Llama, k=8 of 64); that amplification is the method's, and is why a TopK SAS point should be
compared in one dtype.
"""

from __future__ import annotations

import copy
from functools import cache

import pytest
import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from sadi.core.activations import EncodedBatch, encode, read_pair_activations
from sadi.core.architectures import model_shape
from sadi.steerers import SAS, Steerer
from sadi.steerers.registry import methods
from tests.conftest import PAIRS, byte_tokenizer, make_tiny
from tests.helpers import (
    CONTS,
    PROMPTS,
    forward,
    generated_logprob,
    loglikelihood_requests,
    steered,
    steered_lm,
)
from tests.steerers.conftest import build
from tests.test_sae import random_sae

HALF = {"bfloat16": torch.bfloat16, "float16": torch.float16}
FAMILIES = ("llama", "gemma3", "gpt2")  # RMSNorm + GQA, Gemma's norms, LayerNorm + Conv1D
CASES = [(m, f, d) for m in sorted(methods()) for f in FAMILIES for d in HALF]
every_case = pytest.mark.parametrize(
    ("method", "family", "dtype"), CASES, ids=[f"{m}-{f}-{d}" for m, f, d in CASES]
)
SLACK = 4.0
SCORE_CASES = [("The sky is", " blue"), ("Water is wet and", "A"), ("Hi", " there friend")]


@cache
def tokenizer() -> PreTrainedTokenizerFast:
    return byte_tokenizer()


@cache
def rounded(family: str, dtype: str) -> PreTrainedModel:
    """The tiny model with its weights rounded to `dtype`, held in float32."""
    model = make_tiny(family)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(HALF[dtype]).float())
    return model


@cache
def half(family: str, dtype: str) -> PreTrainedModel:
    """The same weights in `dtype`."""
    return copy.deepcopy(rounded(family, dtype)).to(HALF[dtype])


def unfitted(method: str) -> Steerer:
    if method == "sas":  # a ReLU SAE: see the module docstring
        return SAS("residual", sae=random_sae("standard", layer=1), lam=8.0, progress=False)
    return build(method)


@cache
def fitted(method: str, family: str, dtype: str, on_half: bool) -> Steerer:
    torch.manual_seed(1)
    model = half(family, dtype) if on_half else rounded(family, dtype)
    return unfitted(method).fit(model, tokenizer(), PAIRS)


def batch() -> EncodedBatch:
    return encode(tokenizer(), PROMPTS, CONTS)


def logprobs(model: PreTrainedModel, steerer: Steerer | None) -> Tensor:
    """Every real position's log-probabilities, float32: [cells, vocab]."""
    b = batch()
    logits = forward(model, b) if steerer is None else steered(model, steerer, b)
    return logits.float().log_softmax(-1)[b.attention_mask.bool()]


def tolerance(family: str, dtype: str) -> float:
    own = (logprobs(half(family, dtype), None) - logprobs(rounded(family, dtype), None)).abs()
    return SLACK * float(own.max()) + 4 * torch.finfo(HALF[dtype]).eps


def state_tensors(steerer: Steerer) -> dict[str, Tensor]:
    return {k: v for k, v in steerer.tensors().items() if v.is_floating_point()}


@every_case
def test_a_half_model_is_steered_as_the_float32_model(method: str, family: str, dtype: str) -> None:
    """One steerer (fitted in float32) on the half and on the float32 copy: the steered
    log-probabilities agree within the dtype's own rounding, far below the steering."""
    st = fitted(method, family, dtype, on_half=False)
    ref = logprobs(rounded(family, dtype), st)
    gap = float((logprobs(half(family, dtype), st) - ref).abs().max())
    effect = float((ref - logprobs(rounded(family, dtype), None)).abs().max())
    assert gap <= tolerance(family, dtype), (gap, tolerance(family, dtype))
    assert effect > 2 * tolerance(family, dtype)  # the comparison can tell steering apart


@every_case
def test_fitting_on_the_half_model(method: str, family: str, dtype: str) -> None:
    """Fitted on the half model: its state is float32 and finite, it steers, and it steers
    the half model as it steers the float32 copy (within the tolerance). It need not equal
    the float32 fit: it read rounded activations, and a fit that selects discretely from 6
    pairs (AUSteer's sign counts) may pick other units from them."""
    st = fitted(method, family, dtype, on_half=True)
    tensors = state_tensors(st)
    assert tensors and all(t.dtype == torch.float32 for t in tensors.values()), {
        k: t.dtype for k, t in tensors.items()
    }
    assert all(bool(torch.isfinite(t).all()) for t in tensors.values())
    ref = logprobs(rounded(family, dtype), st)
    gap = float((logprobs(half(family, dtype), st) - ref).abs().max())
    effect = float((ref - logprobs(rounded(family, dtype), None)).abs().max())
    assert gap <= tolerance(family, dtype), (gap, tolerance(family, dtype))
    assert effect > 2 * tolerance(family, dtype)


@pytest.mark.parametrize("dtype", sorted(HALF))
def test_activations_are_read_in_float32(dtype: str) -> None:
    """What every fit reads from a half model is float32 (the half values, exactly): the
    statistics of every method are accumulated in float32 from there."""
    model, tok = half("llama", dtype), tokenizer()
    shape = model_shape(model)
    pos, neg = read_pair_activations(model, tok, PAIRS, "residual", shape, progress=False)
    assert pos.dtype == neg.dtype == torch.float32
    assert torch.equal(pos, pos.to(HALF[dtype]).float())  # half values, upcast exactly


@pytest.mark.parametrize("method", sorted(methods()))
@pytest.mark.parametrize("family", FAMILIES)
def test_scored_equals_generated_in_bfloat16(method: str, family: str) -> None:
    """On the bf16 model, a steered log-likelihood (lm-eval's `loglikelihood`, log-softmax
    in float32) equals teacher-forced KV-cache generation's, as closely as the unsteered
    model's two computations agree (a full forward and cached decode steps round
    differently in bf16)."""
    model = half(family, "bfloat16")
    st = fitted(method, family, "bfloat16", on_half=True)
    requests = loglikelihood_requests(SCORE_CASES)

    def gap(steerer: Steerer | None) -> float:
        lm = steered_lm(model, steerer, tokenizer())
        scored = [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]
        made = [generated_logprob(model, steerer, *lm._encode_pair(c, k)) for c, k in SCORE_CASES]
        return max(abs(a - b) for a, b in zip(scored, made, strict=True))

    own = gap(None)
    eps = torch.finfo(torch.bfloat16).eps
    assert gap(st) <= SLACK * own + 4 * eps, (gap(st), own)
