"""lm-evaluation-harness model `sadi`: HFLM with a fitted steerer applied. Stays thin.

lm-eval builds each log-likelihood row as `(context + continuation)[-(max_length + 1):][:-1]`,
right-pads with token 0, sorts rows by length and calls `_model_call(rows)` with no context
length; with the logits cache, requests whose `context + continuation[:-1]` coincide share
one row. The last context token of a row (where SADI edits) is known only inside
`_loglikelihood_tokens`, so this wrapper records it there, keyed by the row's tokens, and
looks each row up in `_model_call`. Requests that would make that key ambiguous (equal rows
with different context boundaries) are scored in separate passes.

Memory is bounded by the batch, not by its longest item: a scoring forward holds at most
`batch_tokens` tokens (rows x padded length; a batch above it runs in parts, one row at the
least), and the full-vocabulary projection runs only on the positions lm-eval reads (from the
batch's earliest last-context token on), so a 50,000-character item costs its own forward,
not a [batch, length, vocab] tensor. Rows longer than `max_length` (the model's context,
unless set) keep their last tokens, as lm-eval does; both are said once per evaluation.

generate_until pads on the left and decodes with a KV cache: the steerer's own position
handling edits the prompt during prefill (its last token for SADI) and, for methods that
steer generated tokens, each decoding step.

From lm-eval's command line: `sadi-lm-eval` (`sadi.eval.cli`).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from sadi.core.models import EMBEDDED_PREFIX, embedded_path
from sadi.core.positions import BatchLayout
from sadi.eval.metrics import NonFiniteScores, overflowed
from sadi.infra import checks
from sadi.steerers.base import Steerer, SteeringHandle, WeightsMismatch

log = logging.getLogger(__name__)

# a row's tokens with trailing pad zeros stripped -> (row length, last context index)
RowKey = tuple[int, ...]
Request = tuple[Any, list[int], list[int]]


def _accepting(steerer: Steerer, model: torch.nn.Module, allow_other_weights: bool) -> Steerer:
    """`steerer` checked against `model`; with `allow_other_weights`, a copy that also
    accepts `model`'s weights (same shape still required), as `Steerer.load` would give."""
    try:
        steerer.check_fingerprint(model)
        return steerer
    except WeightsMismatch:
        if not allow_other_weights:
            raise
    # a shallow copy shares the fitted tensors; accept_weights rebinds its accepted set
    return copy.copy(steerer).accept_weights(model)


DEFAULT_BATCH_TOKENS = 8192


def _positive_int(name: str, value: object) -> int:
    """A positive int given as an int or a digit string (lm-eval's --model_args)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    return checks.positive_int(name, value, f"{name}=8192")


def _lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def _strip_pad(tokens: Sequence[int]) -> RowKey:
    end = len(tokens)
    while end > 0 and tokens[end - 1] == 0:
        end -= 1
    return tuple(tokens[:end])


# HFLM's attributes SteeredLM reads or sets (lm-eval 0.4.13): its batch size, which the
# grouping within batch_tokens changes per group, and its autocast dtype, which the
# tail-logits forward applies as HFLM's own forward does
_HFLM_ATTRIBUTES = ("batch_size_per_gpu", "mixed_precision_dtype", "softmax_dtype")


def _check_hflm_attributes(lm: Any) -> None:
    """Fail loudly where this lm-eval's HFLM lacks an attribute SteeredLM relies on (a
    rename would otherwise drop the memory bound or mixed precision without a word)."""
    missing = [a for a in _HFLM_ATTRIBUTES if not hasattr(lm, a)]
    if missing:
        import lm_eval

        raise RuntimeError(
            f"lm-eval {getattr(lm_eval, '__version__', '?')}'s HFLM has no {missing}, which "
            "sadi's SteeredLM reads; install the tested lm-eval (constraints.txt)"
        )


@register_model("sadi")
class SteeredLM(HFLM):
    """HFLM whose forward passes run under a fitted steerer (or unsteered when None).

    Args:
        pretrained: a loaded model, an `embedded:<name>`, a local path or a hub id.
        steerer: a fitted `Steerer`, or the directory of a saved one; None = no steering.
        allow_other_weights: accept a steerer fitted on other weights of the same shape
            (e.g. the base model of this chat model), for weights you know are equivalent;
            as `Steerer.load(..., allow_other_weights=True)`. A bool, or "true"/"false".
            A `Steerer` object given is not changed: a copy accepts this model's weights.
        batch_tokens: the most tokens (rows x padded length) one scoring forward holds; a
            larger batch is scored in parts (at least one row each). An int, or a string.
        progress: lm-eval's progress bars (tokenizing, requests); false hides them.
        **kwargs: passed to `HFLM` (tokenizer, batch_size, device, max_length, ...).

    Raises:
        FingerprintMismatch: the steerer was fitted on a model of another shape.
        WeightsMismatch: same shape, other weights, and `allow_other_weights` is false.

    Example:
        >>> lm = SteeredLM("embedded:smollm2-135m-instruct", steerer="runs/x/steerer")
    """

    def __init__(
        self,
        pretrained: Any,
        steerer: Steerer | str | Path | None = None,
        allow_other_weights: bool | str = False,
        batch_tokens: int | str = DEFAULT_BATCH_TOKENS,
        progress: bool | str = True,
        **kwargs: Any,
    ) -> None:
        allow = checks.boolean("allow_other_weights", allow_other_weights)
        self.progress = checks.boolean("progress", progress)
        self.batch_tokens = _positive_int("batch_tokens", batch_tokens)
        if steerer is not None and not isinstance(steerer, Steerer | str | Path):
            raise TypeError(
                f"steerer={steerer!r} ({type(steerer).__name__}) must be a fitted Steerer or "
                "the directory of a saved one (steerer=DIR in --model_args), or None"
            )
        if isinstance(pretrained, str) and pretrained.startswith(EMBEDDED_PREFIX):
            pretrained = str(embedded_path(pretrained[len(EMBEDDED_PREFIX) :]))
        # log-probabilities in float32 whatever the model's dtype: a bf16 log_softmax rounds
        # a log-likelihood of -85 to a multiple of 0.5 (lm-eval's default is the model's)
        kwargs.setdefault("softmax_dtype", "float32")
        super().__init__(pretrained=pretrained, **kwargs)
        _check_hflm_attributes(self)
        if isinstance(steerer, str | Path):
            steerer = Steerer.load(steerer, self.model, allow_other_weights=allow)
        elif steerer is not None:
            steerer = _accepting(steerer, self.model, allow)
        self.steerer = steerer
        self._rows: dict[RowKey, tuple[int, int]] | None = None
        self._detecting = False  # lm-eval's batch-size probe: plain HFLM forwards, unsteered
        self._unsteered = False  # sadi's own probe (`_tail_logits_agree`): unsteered
        self._tail_ok: bool | None = None  # lm-eval reads tail-only logits right (checked)
        self.split_batches = 0  # forwards run in parts to stay within batch_tokens

    # ----- lm-eval's entry points: progress bars as asked ---------------------------------
    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[Any]:
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm or not self.progress)  # type: ignore[no-any-return]

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[Any]:
        quiet = disable_tqdm or not self.progress
        return super().loglikelihood_rolling(requests, disable_tqdm=quiet)  # type: ignore[no-any-return]

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[Any]:
        return super().generate_until(requests, disable_tqdm=disable_tqdm or not self.progress)  # type: ignore[no-any-return]

    # ----- log-likelihood --------------------------------------------------------------
    def _row(self, context: list[int], continuation: list[int]) -> tuple[RowKey, int, int]:
        row = (context + continuation)[-(self.max_length + 1) :][:-1]
        last_context = len(row) - len(continuation)
        if last_context < 0:
            raise ValueError(
                f"a continuation of {len(continuation)} tokens leaves no context within "
                f"max_length={self.max_length}; raise max_length or shorten the continuation"
            )
        return _strip_pad(row), len(row), last_context

    def _loglikelihood_tokens(  # type: ignore[override]
        self, requests: list[Request], disable_tqdm: bool = False, override_bs: int | None = None
    ) -> list[tuple[float, bool]]:
        self._note_truncation(requests)
        if self._tail_ok is None:
            self._tail_ok = self._tail_logits_agree()
        # Split into passes in which every row key has one (length, boundary).
        passes: list[tuple[list[int], dict[RowKey, tuple[int, int]]]] = []
        for i, (_, context, continuation) in enumerate(requests):
            key, length, boundary = self._row(context, continuation)
            for members, table in passes:
                if table.setdefault(key, (length, boundary)) == (length, boundary):
                    members.append(i)
                    break
            else:
                passes.append(([i], {key: (length, boundary)}))
        results: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        for members, table in passes:
            for size, group in self._by_batch_size(members, table, requests):
                self._rows = table
                fixed = self.batch_size_per_gpu  # type: ignore[has-type]
                if size is not None:
                    self.batch_size_per_gpu = size
                try:
                    out = super()._loglikelihood_tokens(
                        [requests[i] for i in group], disable_tqdm, override_bs
                    )
                finally:
                    self._rows = None
                    if size is not None:
                        self.batch_size_per_gpu = fixed  # type: ignore[assignment]
                for i, res in zip(group, out, strict=True):
                    results[i] = res
        return results

    def _by_batch_size(
        self, members: list[int], table: dict[RowKey, tuple[int, int]], requests: list[Request]
    ) -> list[tuple[int | None, list[int]]]:
        """Requests grouped by the batch size that keeps rows x length within batch_tokens
        (lm-eval batches a group's rows longest first, so its first batch is its widest);
        one group at the set batch size where no row needs fewer (or batch_size=auto)."""
        fixed = self.batch_size_per_gpu
        if not isinstance(fixed, int) or isinstance(fixed, bool):
            return [(None, members)]
        groups: dict[int, list[int]] = {}
        for i in members:
            _, context, continuation = requests[i]
            length = table[self._row(context, continuation)[0]][0]
            size = max(1, min(fixed, self.batch_tokens // max(1, length)))
            groups.setdefault(size, []).append(i)
        if len(groups) > 1 or fixed not in groups:
            self.split_batches += 1
        return [(None if size == fixed else size, group) for size, group in sorted(groups.items())]

    def _note_truncation(self, requests: list[Request]) -> None:
        """Say once per evaluation how many rows keep only their last max_length tokens."""
        long = [
            len(c) + len(k) - 1 for _, c, k in requests if len(c) + len(k) - 1 > self.max_length
        ]
        if long:
            log.warning(
                "note: %d of %d scored rows are longer than max_length=%d tokens (the longest "
                "%d): each is scored on its last %d tokens (left truncation, as lm-eval does); "
                "set model.max_length to change it",
                len(long),
                len(requests),
                self.max_length,
                max(long),
                self.max_length,
            )

    def _tail_logits_agree(self) -> bool:
        """Whether this lm-eval reads continuation logits right when `_model_call` returns
        the last positions only (0.4.13 offsets them by `logits.shape[1] - padding_len`):
        two tiny requests scored both ways, unsteered. If not, every forward returns full
        logits (as HFLM's own) and memory grows with the longest row again."""
        vocab = int(self.model.get_input_embeddings().weight.shape[0])
        ids = [t % vocab for t in (11, 12, 13, 14, 15, 16, 17)]
        probe: list[Request] = [
            (("", ""), ids[:4], ids[4:6]),
            (("", ""), ids[:2], ids[6:]),
        ]
        self._unsteered = True
        try:
            self._tail_ok = False
            full = self._loglikelihood_tokens(probe, disable_tqdm=True)
            self._tail_ok = True
            tail = self._loglikelihood_tokens(probe, disable_tqdm=True)
        finally:
            self._unsteered = False
        agree = all(abs(a[0] - b[0]) <= 1e-3 for a, b in zip(full, tail, strict=True))
        if not agree:
            log.warning(
                "lm-eval %s reads tail-only logits differently from 0.4.13; scoring with full "
                "logits (memory grows with the longest row)",
                _lm_eval_version(),
            )
        return agree

    def _layout(self, inps: torch.Tensor) -> BatchLayout:
        assert self._rows is not None
        lengths, prompts = [], []
        for tokens in inps.tolist():
            key = _strip_pad(tokens)
            if key not in self._rows:
                raise RuntimeError(
                    "a row reached _model_call that _loglikelihood_tokens did not announce; "
                    "this lm-eval version batches differently than sadi expects"
                )
            length, boundary = self._rows[key]
            lengths.append(length)
            prompts.append(boundary + 1)
        return BatchLayout(
            seq_lengths=torch.tensor(lengths),
            prompt_lengths=torch.tensor(prompts),
            padded_length=int(inps.shape[1]),
            padding_side="right",
        )

    def _detect_batch_size(self, requests: Sequence | None = None, pos: int = 0) -> int:
        self._detecting = True  # probe batches are random tokens: run them unsteered
        try:
            return super()._detect_batch_size(requests, pos)  # type: ignore[no-any-return]
        finally:
            self._detecting = False

    @contextmanager
    def _steering(self) -> Iterator[SteeringHandle | None]:
        if self.steerer is None or self._detecting or self._unsteered:
            with nullcontext():
                yield None
            return
        with self.steerer.apply(self.model) as handle:
            yield handle

    def _model_call(
        self,
        inps: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self._rows is None or self._detecting or attn_mask is not None:  # not scoring rows
            with self._steering():
                return super()._model_call(inps, attn_mask=attn_mask, labels=labels)  # type: ignore[no-any-return]
        layout = self._layout(inps)
        # positions lm-eval reads: from the earliest last-context token of the batch on
        keep = layout.padded_length - int(layout.prompt_lengths.min()) + 1
        keep = keep if self._tail_ok else layout.padded_length
        per = max(1, self.batch_tokens // max(1, layout.padded_length))
        if per < layout.batch_size:
            self.split_batches += 1
        parts = []
        for start in range(0, layout.batch_size, per):
            stop = min(start + per, layout.batch_size)
            with self._steering() as handle:
                if handle is not None:
                    handle.set_layout(layout.rows(start, stop))
                parts.append(self._logits(inps[start:stop], keep))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _logits(self, inps: torch.Tensor, keep: int) -> torch.Tensor:
        """[rows, keep, vocab]: the logits of the last `keep` positions (HFLM's forward)."""
        dtype = self.mixed_precision_dtype
        with (
            torch.no_grad(),
            torch.autocast(device_type=self.device.type, dtype=dtype, enabled=dtype is not None),
        ):
            return self.model(inps, logits_to_keep=keep).logits  # type: ignore[no-any-return]

    def _model_generate(
        self, context: torch.Tensor, max_length: int, stop: list[str], **generation_kwargs: Any
    ) -> torch.Tensor:
        from transformers import LogitsProcessorList

        given = generation_kwargs.get("logits_processor") or []
        generation_kwargs["logits_processor"] = LogitsProcessorList(
            [*given, _RefuseNaN(self.model.dtype)]
        )
        with self._steering():
            return super()._model_generate(context, max_length, stop, **generation_kwargs)  # type: ignore[no-any-return]


class _RefuseNaN:
    """A logits processor that stops generation at NaN logits (an overflowed dtype), which
    greedy decoding would otherwise turn into arbitrary tokens without a word."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if bool(torch.isnan(scores).any()):
            raise NonFiniteScores(
                f"generation met NaN logits at position {input_ids.shape[1]}: "
                f"{overflowed(self.dtype)}"
            )
        return scores


__all__ = ["DEFAULT_BATCH_TOKENS", "SteeredLM"]
