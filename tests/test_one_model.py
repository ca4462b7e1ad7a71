"""A steered model is one model: scoring a continuation and generating it edit the same cells.

The steered log-likelihood lm-eval's `loglikelihood` gets for a continuation equals the
log-probability the same steered model assigns when `generate` produces that continuation
token by token with its real KV cache (teacher-forced), and every continuation (a one-token
answer included) moves. The contract suite (`tests/steerers/test_contract.py`) checks this
for each registered method's default configuration (`DEFAULTS` below); here the other
components, positions and modes (`VARIANTS`) on every family, and the methods on the
embedded SmolLM2 (slow). `METHODS` (both) serves the sweep engine's tests too.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from sadi.data.pairs import Pair
from sadi.eval.lm import SteeredLM
from sadi.sae import SparseAutoencoder
from sadi.steerers import CAA, ITI, SADI, SAS, AUSteer, Steerer
from tests.conftest import PAIRS, TINY, byte_tokenizer, make_tiny
from tests.helpers import generated_logprob, loglikelihood_requests, steered_lm


def _sae() -> SparseAutoencoder:
    """A random TopK SAE of layer 1 of the tiny models (d_model 32)."""
    from tests.test_sae import random_sae

    return random_sae("topk", d_in=32, d_sae=64, k=8, layer=1)


# (name, steerer factory): fitted once per family, then varied by apply parameters.
# Each method's default component, positions and mode (the contract suite checks scoring =
# generation on these, with its own k and strength):
DEFAULTS: dict[str, Callable[[], Steerer]] = {
    "sadi-head-online": lambda: SADI("head", k=3, strength=4.0, progress=False),
    "iti-response": lambda: ITI(k=3, alpha=8.0, progress=False),
    "caa-response": lambda: CAA(layer=1, multiplier=3.0, progress=False),
    "austeer-head": lambda: AUSteer("head", k=6, alpha=6.0, progress=False),
    "sas-code": lambda: SAS(sae=_sae(), tau=0.0, lam=4.0, progress=False),
}
# the other components, positions and modes
VARIANTS: dict[str, Callable[[], Steerer]] = {
    "sadi-head-faithful": lambda: SADI("head", k=3, strength=4.0, mode="faithful", progress=False),
    "sadi-neuron-faithful": lambda: SADI(
        "neuron", k=8, strength=6.0, mode="faithful", progress=False
    ),
    "sadi-hidden-online": lambda: SADI("hidden", k=6, strength=5.0, progress=False),
    "sadi-residual-fixed": lambda: SADI(
        "residual", k=6, strength=5.0, variant="fixed", progress=False
    ),
    "iti-all": lambda: ITI(k=3, alpha=8.0, positions="all", progress=False),
    "caa-all": lambda: CAA(layer=1, multiplier=3.0, positions="all", progress=False),
    "austeer-hidden-fixed": lambda: AUSteer(
        "hidden", k=6, alpha=3.0, variant="fixed_strength", progress=False
    ),
    "austeer-residual": lambda: AUSteer("residual", k=6, alpha=6.0, progress=False),
    "sas-decoder-all": lambda: SAS(
        sae=_sae(), tau=0.0, lam=4.0, mode="decoder", positions="all", progress=False
    ),
}
METHODS = {**DEFAULTS, **VARIANTS}
CASES = [
    ("The sky is", " blue"),
    ("Water is wet and", "A"),  # one token: only the last context position can change it
    ("Hi", " there friend"),
]
_FITTED: dict[tuple[str, str], tuple[nn.Module, Steerer]] = {}


def fitted(family: str, method: str) -> tuple[nn.Module, Steerer]:
    key = (family, method)
    if key not in _FITTED:
        model = make_tiny(family)
        _FITTED[key] = (model, METHODS[method]().fit(model, byte_tokenizer(), list(PAIRS)))
    return _FITTED[key]


@pytest.mark.parametrize("method", sorted(VARIANTS))
def test_scored_loglikelihood_equals_teacher_forced_generation(family: str, method: str) -> None:
    model, steerer = fitted(family, method)
    lm = steered_lm(model, steerer, byte_tokenizer())
    reqs = loglikelihood_requests(CASES)
    scored = [ll for ll, _ in lm.loglikelihood(reqs, disable_tqdm=True)]
    generated = [generated_logprob(model, steerer, *lm._encode_pair(c, k)) for c, k in CASES]
    torch.testing.assert_close(torch.tensor(scored), torch.tensor(generated), atol=1e-4, rtol=0)
    # and the steerer did something on every case, the one-token answer included
    base = [generated_logprob(model, None, *lm._encode_pair(c, k)) for c, k in CASES]
    for case, s, b in zip(CASES, scored, base):
        assert abs(s - b) > 1e-4, f"{method} did not move {case} ({s} vs unsteered {b})"


# ----- the embedded model ----------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_one_token_answers_change_and_generation_agrees(smollm2: tuple) -> None:
    """On the real model and real BoolQ items (one-token " yes" / " no" answers), each method
    moves the scores, and scoring equals teacher-forced generation."""
    from sadi.data.pairs import make_pairs
    from sadi.data.tasks import load_task

    model, tok = smollm2
    task = load_task("boolq")
    pairs: list[Pair] = make_pairs(task.splits["fit"], n_pairs=12)
    items = task.splits["select"][:4]
    steerers: dict[str, Steerer] = {
        "sadi": SADI("head", k=4, strength=8.0, progress=False),
        "iti": ITI(k=13, alpha=15.0, progress=False),
        "caa": CAA(layer=15, multiplier=8.0, progress=False),
        "austeer": AUSteer("head", k=32, alpha=20.0, progress=False),
    }
    reqs = loglikelihood_requests([(it.question, ch) for it in items for ch in it.choices])
    plain = SteeredLM(model, tokenizer=tok, batch_size=8, device="cpu")
    assert all(len(plain._encode_pair(*r.arguments)[1]) == 1 for r in reqs)
    base = torch.tensor([ll for ll, _ in plain.loglikelihood(reqs, disable_tqdm=True)])
    for name, steerer in steerers.items():
        steerer.fit(model, tok, pairs)
        lm = SteeredLM(model, steerer=steerer, tokenizer=tok, batch_size=8, device="cpu")
        got = torch.tensor([ll for ll, _ in lm.loglikelihood(reqs, disable_tqdm=True)])
        assert float((got - base).abs().max()) > 1e-3, f"{name} cannot change one-token scores"
        ctx, cont = lm._encode_pair(*reqs[0].arguments)
        torch.testing.assert_close(
            got[0], torch.tensor(generated_logprob(model, steerer, ctx, cont)), atol=1e-4, rtol=0
        )


def test_every_family_is_covered() -> None:
    assert set(TINY) == {"llama", "mistral", "qwen2", "gemma3", "gpt2", "bloom", "falcon"}
