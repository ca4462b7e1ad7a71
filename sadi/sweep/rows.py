"""lm-eval's log-likelihood rows as the sweep engine splits them (head, suffix), and the
small helpers every part of the engine shares: KV-cache keywords, micro-batches."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

Score = tuple[float, bool]  # (log-likelihood, greedy), as lm-eval's _loglikelihood_tokens
# the KV cache (per layer [1, kv heads, L, head_dim]) of the L tokens a chunk's heads share
Shared = tuple[list[tuple[Tensor, Tensor]], int]
PAD = 0  # lm-eval pads rows with token 0


@dataclass(frozen=True)
class Row:
    """One log-likelihood request as lm-eval scores it.

    Attributes:
        head: the row up to and including its last context token.
        suffix: the last context token and the continuation but its last token.
        continuation: the tokens whose log-probabilities are summed.
    """

    head: tuple[int, ...]
    suffix: tuple[int, ...]
    continuation: tuple[int, ...]


def split_request(context: Sequence[int], continuation: Sequence[int], max_length: int) -> Row:
    """lm-eval's row for (context, continuation), left-truncated to `max_length`, split at
    its last context token."""
    if not continuation:
        raise ValueError("a log-likelihood request needs a non-empty continuation")
    row = (list(context) + list(continuation))[-(max_length + 1) :][:-1]
    p = len(row) - len(continuation)
    if p < 0:
        raise ValueError(
            f"a continuation of {len(continuation)} tokens leaves no context within "
            f"max_length={max_length}; raise max_length or shorten the continuation"
        )
    return Row(tuple(row[: p + 1]), tuple(row[p:]), tuple(continuation))


def cache_keyword(fn: Callable[..., Any]) -> str:
    """The name under which `fn` (a model's forward) takes its KV cache: `cache` in
    transformers >= 5.24, `past_key_values` before; anything else is refused."""
    params = inspect.signature(fn).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    raise TypeError(
        f"{getattr(fn, '__qualname__', fn)} takes no `cache` or `past_key_values` argument; "
        "the sweep engine cannot reuse a KV cache with this model (transformers "
        "version?); run the sweep with sweep.engine=false"
    )


def takes(fn: Callable[..., Any], name: str) -> bool:
    return name in inspect.signature(fn).parameters


def micro_batches(lengths: Sequence[int], tokens: int) -> list[int]:
    """End indices of consecutive batches of `lengths` (longest first), each padded to its
    first length and holding at most `tokens` padded tokens (at least one row)."""
    ends, start = [], 0
    for i in range(1, len(lengths) + 1):
        if i == len(lengths) or (i - start + 1) * lengths[start] > tokens:
            ends.append(i)
            start = i
    return ends


__all__ = [
    "PAD",
    "Row",
    "Score",
    "Shared",
    "cache_keyword",
    "micro_batches",
    "split_request",
    "takes",
]
