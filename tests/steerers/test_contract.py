"""The steerer contract, checked for every registered method on every tiny architecture.

Parametrised over `sadi.steerers.registry.methods()` (a new method is included without an
edit here; `conftest.py` says when it needs a factory) x the tiny families (`TINY`, the
seven the rest of the suite runs on, and `MORE_TINY`: Gemma 2, Qwen 3). Each method is
built by `conftest.build`: default constructor and component, its strength `STRENGTH_STEP`
away from its identity. For each case:

- `apply` removes exactly its hooks on exit, also when the block raises;
- the identity strength (`spec.identity`) is the unsteered model bit for bit, in scoring
  and in KV-cache generation; the strength away from it changes every row;
- `fit` is deterministic; save / load round-trips tensors, parameters and steered logits;
- `with_params` shares the fit (no forward pass runs) and refuses fit parameters;
- a batch, left or right padded, equals its rows steered one at a time;
- a steered log-likelihood (lm-eval's `loglikelihood` through `SteeredLM`) equals the
  log-probability of teacher-forced generation with the KV cache, and one-token answers
  move.

Each method is fitted once per family (module cache) and only copies of it are changed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from sadi.core.activations import EncodedBatch, encode
from sadi.steerers import Steerer
from sadi.steerers.registry import methods
from tests.conftest import ALL_FAMILIES, PAIRS, byte_tokenizer, make_tiny
from tests.helpers import (
    CONTS,
    PROMPTS,
    count_hooks,
    forward,
    generated_logprob,
    loglikelihood_requests,
    steered,
    steered_lm,
)
from tests.steerers.conftest import STRENGTH_STEP, build

CASES = [(m, f) for m in sorted(methods()) for f in ALL_FAMILIES]
every_case = pytest.mark.parametrize(
    ("method", "family"), CASES, ids=[f"{m}-{f}" for m, f in CASES]
)

# Tolerances. The tiny models' logits stay below |5|, where float32 values are spaced 4.8e-7
# apart; log-likelihoods of the continuations below (up to 13 byte tokens) reach |85|, spaced
# 7.6e-6 apart.
# - A batch vs its rows one at a time: the same float32 arithmetic on other shapes (other
#   matmul blocking and reduction order, padded keys masked out), so logits agree to a few
#   spacings, not bit for bit (at most 2.3e-6, 5 spacings, over every case here); 1e-5 is
#   20 spacings.
BATCH_ATOL = 1e-5
# - Scored vs generated: each token's log-probability from one full forward on one side and
#   from a KV-cache decode step on the other, summed: they differ by at most one spacing of
#   the sum here (7.6e-6); 1e-4 is 13 spacings.
SCORE_ATOL = 1e-4
# - Steering "changes" a row when some logit moves by more than 1e-3 (2,000 spacings; the
#   strengths used move every row by 0.8 or more), and a log-likelihood "moves" by more than
#   1e-4, far above the rounding above: a change of a few spacings is no steering.
CHANGED = 1e-3
MOVED = 1e-4

SCORE_CASES = [
    ("The sky is", " blue"),
    ("Water is wet and", "A"),  # one token: only the last context position can change it
    ("Hi", " there friend"),
]
ONE_TOKEN_CONTEXTS = ["Is fire hot? Answer:", "The sky is green. True or false?", "Pick one:"]


@cache
def tokenizer() -> PreTrainedTokenizerFast:
    return byte_tokenizer()


@cache
def model_of(family: str) -> PreTrainedModel:
    """The tiny model of `family` (seed 0), shared by every case of that family."""
    return make_tiny(family)


@cache
def fitted(method: str, family: str) -> Steerer:
    """`method` fitted on `family`'s tiny model, once; tests change only copies of it."""
    torch.manual_seed(1)
    return build(method).fit(model_of(family), tokenizer(), PAIRS)


def batch(padding_side: str = "right") -> EncodedBatch:
    return encode(tokenizer(), PROMPTS, CONTS, padding_side=padding_side)


def at_strength(steerer: Steerer, value: float) -> Steerer:
    return steerer.with_params(**{type(steerer).spec.strength: value})


def greedy_logits(model: PreTrainedModel, steerer: Steerer | None) -> Tensor:
    """The raw logits of 4 greedy KV-cache decoding steps from two left-padded prompts."""
    enc = encode(tokenizer(), ["The sky is", "Hi"], padding_side="left")
    kwargs: dict[str, Any] = dict(
        attention_mask=enc.attention_mask,
        max_new_tokens=4,
        min_new_tokens=4,
        do_sample=False,
        pad_token_id=0,
        use_cache=True,
        output_logits=True,
        return_dict_in_generate=True,
    )
    with torch.no_grad():
        if steerer is None:
            out = model.generate(enc.input_ids, **kwargs)
        else:
            with steerer.apply(model):
                out = model.generate(enc.input_ids, **kwargs)
    return torch.stack(out.logits, dim=1)


@contextmanager
def forwards_counted() -> Iterator[list[str]]:
    """The class name of every module forward that runs in the block, of any model."""
    seen: list[str] = []
    handle = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda module, args: seen.append(type(module).__name__)
    )
    try:
        yield seen
    finally:
        handle.remove()


def shares_memory(a: Tensor, b: Tensor) -> bool:
    """`a` and `b` are views of the same memory with the same shape and strides (the same
    tensor, or e.g. a `detach()` of it)."""
    return (a.data_ptr(), a.shape, a.stride()) == (b.data_ptr(), b.shape, b.stride())


def another(value: Any) -> Any:
    """A value different from `value`, of its type where that is simple."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value - 1
    if isinstance(value, str):
        return value + "-other"
    return "other"


# ----- hook lifetime -------------------------------------------------------------------------
@every_case
def test_hooks_removed_on_exit_and_when_the_block_raises(method: str, family: str) -> None:
    model, steerer = model_of(family), fitted(method, family)
    n0 = count_hooks(model)
    rows = batch()
    with steerer.apply(model) as handle:
        assert count_hooks(model) > n0
        handle.set_layout(rows.layout)
        forward(model, rows)
    assert count_hooks(model) == n0
    with pytest.raises(RuntimeError, match="boom"):
        with steerer.apply(model) as handle:
            handle.set_layout(rows.layout)
            forward(model, rows)
            raise RuntimeError("boom")
    assert count_hooks(model) == n0


# ----- strength --------------------------------------------------------------------------------
@every_case
def test_identity_strength_is_the_unsteered_model_bit_for_bit(method: str, family: str) -> None:
    """`spec.identity`, set by `with_params` or by the constructor (given the fit by `adopt`),
    scores left- and right-padded rows and generates with the KV cache exactly as the
    unsteered model."""
    model, steerer = model_of(family), fitted(method, family)
    spec = type(steerer).spec
    identity = [
        at_strength(steerer, spec.identity),
        build(method, **{spec.strength: spec.identity}).adopt(steerer),
    ]
    for side in ("left", "right"):
        rows = batch(side)
        unsteered = forward(model, rows)
        for each in identity:
            assert torch.equal(steered(model, each, rows), unsteered), side
    assert torch.equal(greedy_logits(model, identity[0]), greedy_logits(model, None))


@every_case
def test_a_strength_away_from_identity_changes_every_row(method: str, family: str) -> None:
    """The contract's strength (`STRENGTH_STEP` from identity) moves some logit of every
    row by more than rounding (`CHANGED`)."""
    model, steerer = model_of(family), fitted(method, family)
    rows = batch()
    unsteered, out = forward(model, rows), steered(model, steerer, rows)
    real = rows.layout.mask("all")
    for row in range(len(PROMPTS)):
        moved = float((out[row][real[row]] - unsteered[row][real[row]]).abs().max())
        assert moved > CHANGED, f"row {row} ({PROMPTS[row]!r}): logits moved by {moved:.1e}"


# ----- fit and artifacts ----------------------------------------------------------------------
@every_case
def test_fit_is_deterministic(method: str, family: str) -> None:
    """A second fit on the same model and pairs, from another global RNG state, gives equal
    tensors (same names, dtypes and values)."""
    first = fitted(method, family)
    torch.manual_seed(2)
    second = build(method).fit(model_of(family), tokenizer(), PAIRS)
    a, b = first.tensors(), second.tensors()
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), name
    assert second.params() == first.params()


@every_case
def test_save_load_round_trips(tmp_path: Path, method: str, family: str) -> None:
    model, steerer = model_of(family), fitted(method, family)
    directory = steerer.save(tmp_path / "steerer")
    loaded = Steerer.load(directory, model)
    assert type(loaded) is type(steerer) and loaded.component == steerer.component
    assert loaded.params() == steerer.params()
    mine, back = steerer.tensors(), loaded.tensors()
    assert sorted(back) == sorted(mine)
    for name, tensor in mine.items():
        assert back[name].dtype == tensor.dtype, name
        assert torch.equal(back[name], tensor), name
    rows = batch()
    assert torch.equal(steered(model, loaded, rows), steered(model, steerer, rows))
    again = type(steerer).load(directory, model)  # the method's own class loads it too
    assert type(again) is type(steerer) and again.params() == steerer.params()


@every_case
def test_with_params_shares_the_fit_and_refuses_fit_parameters(method: str, family: str) -> None:
    """Another strength is another point of the same fit: the new steerer holds the fitted
    state's tensors (the same memory: no copy, no refit; not one module forward runs) and
    the same model
    record. A parameter outside `spec.apply_params` changes what `fit` computes: refused,
    by name, as is a name that is no parameter."""
    steerer = fitted(method, family)
    spec = type(steerer).spec
    change = {spec.strength: spec.identity - STRENGTH_STEP}  # the other side of identity
    with forwards_counted() as ran:
        moved = steerer.with_params(**change)
        same = steerer.with_params(**{p: steerer.params()[p] for p in spec.apply_params})
    assert ran == []
    assert type(moved) is type(steerer)
    assert moved.params() == {**steerer.params(), **change}
    assert same.params() == steerer.params()
    assert moved.record is steerer.record
    mine = steerer.tensors()
    assert sorted(moved.tensors()) == sorted(mine)
    for name, tensor in moved.tensors().items():
        assert shares_memory(tensor, mine[name]), f"{name} was copied or recomputed"
    params = steerer.params()
    fit_params = [p for p in params if p not in spec.apply_params]
    for name in fit_params:
        with pytest.raises(ValueError, match=re.escape(f"{name} changes what fit")):
            steerer.with_params(**{name: another(params[name])})
    with pytest.raises(ValueError, match="has no parameter 'strenght'"):
        steerer.with_params(strenght=1.0)


# ----- batching ----------------------------------------------------------------------------
@every_case
def test_a_batch_equals_its_rows_one_at_a_time(method: str, family: str) -> None:
    """Left- and right-padded batches: each row's real positions equal that row steered
    alone (to `BATCH_ATOL`, see above)."""
    model, steerer = model_of(family), fitted(method, family)
    tok = tokenizer()
    alone = [steered(model, steerer, encode(tok, [p], [c]))[0] for p, c in zip(PROMPTS, CONTS)]
    for side in ("left", "right"):
        rows = batch(side)
        out = steered(model, steerer, rows)
        starts = rows.layout.starts()
        for row, single in enumerate(alone):
            s = int(starts[row])
            got = out[row, s : s + single.shape[0]]
            torch.testing.assert_close(got, single, rtol=0, atol=BATCH_ATOL)


# ----- scoring and generation are one model ------------------------------------------------------
@every_case
def test_scored_loglikelihood_equals_teacher_forced_generation(method: str, family: str) -> None:
    """lm-eval's `loglikelihood` of a continuation under steering equals the log-probability
    that steered `generate` (KV cache, one token per step, teacher-forced) assigns it."""
    model, steerer = model_of(family), fitted(method, family)
    lm = steered_lm(model, steerer, tokenizer())
    requests = loglikelihood_requests(SCORE_CASES)
    scored = [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    generated = [generated_logprob(model, steerer, *lm._encode_pair(c, k)) for c, k in SCORE_CASES]
    torch.testing.assert_close(
        torch.tensor(scored), torch.tensor(generated), atol=SCORE_ATOL, rtol=0
    )


@every_case
def test_one_token_answers_move(method: str, family: str) -> None:
    """On A/B-style choices (one token after the context), steering changes every score:
    the position that predicts the answer is edited."""
    model, steerer = model_of(family), fitted(method, family)
    requests = loglikelihood_requests([(c, k) for c in ONE_TOKEN_CONTEXTS for k in ("A", "B")])
    lm = steered_lm(model, steerer, tokenizer())
    assert all(len(lm._encode_pair(*r.arguments)[1]) == 1 for r in requests)
    got = torch.tensor([ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)])
    plain = steered_lm(model, None, tokenizer())
    base = torch.tensor([ll for ll, _ in plain.loglikelihood(requests, disable_tqdm=True)])
    assert bool(((got - base).abs() > MOVED).all()), (got - base).tolist()
