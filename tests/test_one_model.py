"""A steered model is one model: scoring a continuation and generating it edit the same cells.

For every family and method, the steered log-likelihood lm-eval's `loglikelihood` gets for
a continuation equals the log-probability the same steered model assigns when `generate`
produces that continuation token by token with its real KV cache (teacher-forced); and on
one-token answers every method changes the scores.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from transformers import LogitsProcessor, LogitsProcessorList

from sadi.data.pairs import Pair
from sadi.eval.lm import SteeredLM
from sadi.sae import SparseAutoencoder
from sadi.steerers import CAA, ITI, SADI, SAS, AUSteer, Steerer
from tests.conftest import PAIRS, TINY, byte_tokenizer, make_tiny
from tests.helpers import loglikelihood_requests


def _sae() -> SparseAutoencoder:
    """A random TopK SAE of layer 1 of the tiny models (d_model 32)."""
    from tests.test_sae import random_sae

    return random_sae("topk", d_in=32, d_sae=64, k=8, layer=1)


# (name, steerer factory): fitted once per family, then varied by apply parameters
METHODS: dict[str, Callable[[], Steerer]] = {
    "sadi-head-online": lambda: SADI("head", k=3, strength=4.0, progress=False),
    "sadi-head-faithful": lambda: SADI("head", k=3, strength=4.0, mode="faithful", progress=False),
    "sadi-neuron-faithful": lambda: SADI(
        "neuron", k=8, strength=6.0, mode="faithful", progress=False
    ),
    "sadi-hidden-online": lambda: SADI("hidden", k=6, strength=5.0, progress=False),
    "sadi-residual-fixed": lambda: SADI(
        "residual", k=6, strength=5.0, variant="fixed", progress=False
    ),
    "iti-response": lambda: ITI(k=3, alpha=8.0, progress=False),
    "iti-all": lambda: ITI(k=3, alpha=8.0, positions="all", progress=False),
    "caa-response": lambda: CAA(layer=1, multiplier=3.0, progress=False),
    "caa-all": lambda: CAA(layer=1, multiplier=3.0, positions="all", progress=False),
    "austeer-head": lambda: AUSteer("head", k=6, alpha=6.0, progress=False),
    "austeer-hidden-fixed": lambda: AUSteer(
        "hidden", k=6, alpha=3.0, variant="fixed_strength", progress=False
    ),
    "austeer-residual": lambda: AUSteer("residual", k=6, alpha=6.0, progress=False),
    "sas-code": lambda: SAS(sae=_sae(), tau=0.0, lam=4.0, progress=False),
    "sas-decoder-all": lambda: SAS(
        sae=_sae(), tau=0.0, lam=4.0, mode="decoder", positions="all", progress=False
    ),
}
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


def lm_for(model: nn.Module, steerer: Steerer | None, batch_size: int | str = 4) -> SteeredLM:
    return SteeredLM(
        model, steerer=steerer, tokenizer=byte_tokenizer(), batch_size=batch_size, device="cpu"
    )


class Force(LogitsProcessor):
    """Teacher forcing inside `generate`: step i can only pick `targets[:, i]`."""

    def __init__(self, targets: Tensor, start: int) -> None:
        self.targets, self.start = targets, start  # [batch, n], prompt length

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        step = input_ids.shape[1] - self.start
        forced = torch.full_like(scores, -torch.inf)
        rows = torch.arange(scores.shape[0])
        forced[rows, self.targets[:, step]] = 0.0
        return forced


def generated_logprob(
    model: nn.Module, steerer: Steerer | None, context: list[int], continuation: list[int]
) -> float:
    """log P(continuation | context) as `generate` sees it, with its KV cache, one new token
    per step (the raw logits of each step, before the forcing processor)."""
    ids = torch.tensor([context])
    targets = torch.tensor([continuation])
    n = len(continuation)
    kwargs = dict(
        attention_mask=torch.ones_like(ids),
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
        pad_token_id=0,
        use_cache=True,
        logits_processor=LogitsProcessorList([Force(targets, ids.shape[1])]),
        output_logits=True,
        return_dict_in_generate=True,
    )
    with torch.no_grad():
        if steerer is None:
            out = model.generate(ids, **kwargs)
        else:
            with steerer.apply(model):
                out = model.generate(ids, **kwargs)
    assert torch.equal(out.sequences[0, ids.shape[1] :], targets[0]), "forcing failed"
    logp = torch.stack(out.logits, dim=1).float().log_softmax(-1)[0]  # [n, vocab]
    return float(logp.gather(1, targets[0][:, None]).sum())


@pytest.mark.parametrize("method", sorted(METHODS))
def test_scored_loglikelihood_equals_teacher_forced_generation(family: str, method: str) -> None:
    model, steerer = fitted(family, method)
    lm = lm_for(model, steerer)
    reqs = loglikelihood_requests(CASES)
    scored = [ll for ll, _ in lm.loglikelihood(reqs, disable_tqdm=True)]
    generated = [generated_logprob(model, steerer, *lm._encode_pair(c, k)) for c, k in CASES]
    torch.testing.assert_close(torch.tensor(scored), torch.tensor(generated), atol=1e-4, rtol=0)
    # and the steerer did something on every case, the one-token answer included
    base = [generated_logprob(model, None, *lm._encode_pair(c, k)) for c, k in CASES]
    for case, s, b in zip(CASES, scored, base):
        assert abs(s - b) > 1e-4, f"{method} did not move {case} ({s} vs unsteered {b})"


@pytest.mark.parametrize("method", sorted(METHODS))
def test_one_token_answers_change(method: str) -> None:
    """On an A/B-style task (one-token choices after the context), steering moves the
    scores: the cell that predicts the answer is edited."""
    model, steerer = fitted("llama", method)
    lm = lm_for(model, steerer, batch_size=1)
    contexts = ["Is fire hot? Answer:", "The sky is green. True or false?", "Pick one:"]
    reqs = loglikelihood_requests([(c, k) for c in contexts for k in ("A", "B")])
    assert all(len(lm._encode_pair(*r.arguments)[1]) == 1 for r in reqs)
    got = torch.tensor([ll for ll, _ in lm.loglikelihood(reqs, disable_tqdm=True)])
    plain = lm_for(model, None)
    base = torch.tensor([ll for ll, _ in plain.loglikelihood(reqs, disable_tqdm=True)])
    assert bool(((got - base).abs() > 1e-4).all()), (got - base).tolist()


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
