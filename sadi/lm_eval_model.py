"""lm-evaluation-harness model `sadi`: HFLM with a fitted steerer applied. Stays thin.

lm-eval builds each log-likelihood row as `(context + continuation)[-(max_length + 1):][:-1]`,
right-pads with token 0, sorts rows by length and calls `_model_call(rows)` with no context
length; with the logits cache, requests whose `context + continuation[:-1]` coincide share
one row. The last context token of a row (where SADI edits) is known only inside
`_loglikelihood_tokens`, so this wrapper records it there, keyed by the row's tokens, and
looks each row up in `_model_call`. Requests that would make that key ambiguous (equal rows
with different context boundaries) are scored in separate passes.

generate_until pads on the left and decodes with a KV cache: the steerer's own position
handling edits the prompt during prefill (its last token for SADI) and, for methods that
steer generated tokens, each decoding step.

From lm-eval's CLI (which does not import plugins), use `sadi-lm-eval`, lm-eval's CLI with
this model registered:
    sadi-lm-eval run --model sadi --tasks ... \
        --model_args pretrained=embedded:smollm2-135m-instruct,steerer=DIR
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from sadi.models import EMBEDDED_PREFIX, embedded_path
from sadi.positions import BatchLayout
from sadi.steerers.base import Steerer, SteeringHandle

# a row's tokens with trailing pad zeros stripped -> (row length, last context index)
RowKey = tuple[int, ...]
Request = tuple[Any, list[int], list[int]]


def _strip_pad(tokens: Sequence[int]) -> RowKey:
    end = len(tokens)
    while end > 0 and tokens[end - 1] == 0:
        end -= 1
    return tuple(tokens[:end])


@register_model("sadi")
class SteeredLM(HFLM):
    """HFLM whose forward passes run under a fitted steerer (or unsteered when None).

    Args:
        pretrained: a loaded model, an `embedded:<name>`, a local path or a hub id.
        steerer: a fitted `Steerer`, or the directory of a saved one; None = no steering.
        **kwargs: passed to `HFLM` (tokenizer, batch_size, device, ...).
    """

    def __init__(
        self, pretrained: Any, steerer: Steerer | str | Path | None = None, **kwargs: Any
    ) -> None:
        if isinstance(pretrained, str) and pretrained.startswith(EMBEDDED_PREFIX):
            pretrained = str(embedded_path(pretrained[len(EMBEDDED_PREFIX) :]))
        super().__init__(pretrained=pretrained, **kwargs)
        if isinstance(steerer, str | Path):
            steerer = Steerer.load(steerer, self.model)
        elif steerer is not None:
            steerer.check_fingerprint(self.model)
        self.steerer = steerer
        self._rows: dict[RowKey, tuple[int, int]] | None = None
        self._detecting = False

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
        if self.steerer is None:
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)  # type: ignore[no-any-return]
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
            self._rows = table
            try:
                out = super()._loglikelihood_tokens(
                    [requests[i] for i in members], disable_tqdm, override_bs
                )
            finally:
                self._rows = None
            for i, res in zip(members, out, strict=True):
                results[i] = res
        return results

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
        if self.steerer is None or self._detecting:
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
        with self._steering() as handle:
            if handle is not None and self._rows is not None:
                handle.set_layout(self._layout(inps))
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)  # type: ignore[no-any-return]

    def _model_generate(
        self, context: torch.Tensor, max_length: int, stop: list[str], **generation_kwargs: Any
    ) -> torch.Tensor:
        with self._steering():
            return super()._model_generate(context, max_length, stop, **generation_kwargs)  # type: ignore[no-any-return]


def cli() -> None:
    """lm-eval's own command line, with the `sadi` model registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
