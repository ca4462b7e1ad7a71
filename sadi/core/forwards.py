"""What kind of forward a base model is running: full, cached prefill, or decode step.

Read off what the forward carries, never off a keyword's name: the KV cache is found as an
object (a `transformers` `Cache`, whatever keyword holds it: `past_key_values` until 5.23,
`cache` from 5.24), and its length is cross-checked against the attention mask, whose
length is always cached + new tokens. A forward whose inputs disagree, or that carries
something cache-like this module does not understand, raises `UnknownForward` naming the
installed transformers version, rather than being steered as a full forward by mistake.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

try:  # the base class of every KV cache in transformers >= 4.36
    from transformers.cache_utils import Cache
except ImportError:  # pragma: no cover - such a transformers is outside the tested range
    Cache = ()  # type: ignore[assignment,misc]


class UnknownForward(RuntimeError):
    """A forward arrived in a shape sadi cannot classify safely (see `forward_kind`)."""


@dataclass(frozen=True)
class ForwardKind:
    """What one base-model forward is.

    Attributes:
        batch: rows in this forward.
        length: new positions in this forward (the input's sequence dimension).
        cached: positions the KV cache already holds (0 for a full forward or a prefill).
        has_cache: a KV cache object came in (a generation: prefill or decode step).
    """

    batch: int
    length: int
    cached: int
    has_cache: bool

    @property
    def decoding(self) -> bool:
        """A decode step: the new positions follow cached ones."""
        return self.cached > 0

    @property
    def prefill(self) -> bool:
        """The first forward of a generation: a cache is filled from empty."""
        return self.has_cache and self.cached == 0


def _versions() -> str:
    import torch
    import transformers

    return f"transformers {transformers.__version__}, torch {torch.__version__}"


def _unknown(what: str) -> UnknownForward:
    return UnknownForward(
        f"{what} ({_versions()}). sadi cannot tell whether this forward is a full pass, a "
        "generation prefill or a KV-cache decode step, so it refuses to steer it rather than "
        "edit the wrong positions. Install the tested versions (`make setup` installs "
        "constraints.txt) or report the transformers version"
    )


def _cache_like(name: str, value: Any) -> bool:
    return isinstance(value, Cache) or (
        value is not None and ("cache" in name.lower() or "past" in name.lower())
    )


def input_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    """The forward's `input_ids` (or `inputs_embeds`) tensor: [batch, pos(, d_model)]."""
    ids = kwargs.get("input_ids", args[0] if args else None)
    if ids is None:
        ids = kwargs.get("inputs_embeds")
    if not isinstance(ids, Tensor) or ids.dim() < 2:
        raise _unknown("a forward came with neither input_ids nor inputs_embeds as a tensor")
    return ids


def forward_kind(args: tuple[Any, ...], kwargs: dict[str, Any]) -> ForwardKind:
    """Classify a base-model forward from its (args, kwargs) as a forward pre-hook sees them.

    Raises:
        UnknownForward: more than one cache, a cache-named input that is no `Cache`
            (a legacy tuple cache, say), a cache without a length, or an attention mask
            whose length is not cached + new positions.
    """
    x = input_of(args, kwargs)
    batch, length = int(x.shape[0]), int(x.shape[1])
    found = [(k, v) for k, v in kwargs.items() if _cache_like(k, v)]
    found += [(f"positional argument {i}", v) for i, v in enumerate(args) if isinstance(v, Cache)]
    # `use_cache` is a flag, `cache_position` a position index: neither is the cache itself
    found = [(k, v) for k, v in found if k not in ("use_cache", "cache_position")]
    if len(found) > 1:
        raise _unknown(f"a forward came with several caches: {[k for k, _ in found]}")
    cached = 0
    if found:
        name, cache = found[0]
        if not isinstance(cache, Cache) or not hasattr(cache, "get_seq_length"):
            raise _unknown(
                f"a forward came with {name}={type(cache).__name__}, which is not a "
                "transformers Cache with get_seq_length()"
            )
        cached = int(cache.get_seq_length())
    mask = kwargs.get("attention_mask")
    if isinstance(mask, Tensor) and mask.dim() == 2 and int(mask.shape[1]) != cached + length:
        raise _unknown(
            f"a forward of {length} new positions came with a cache of {cached} positions and "
            f"an attention mask of {int(mask.shape[1])} (expected {cached + length})"
        )
    cache_position = kwargs.get("cache_position")
    if isinstance(cache_position, Tensor) and cache_position.numel() > 0:
        if int(cache_position.reshape(-1)[0]) != cached:
            raise _unknown(
                f"cache_position starts at {int(cache_position.reshape(-1)[0])} but the cache "
                f"holds {cached} positions"
            )
    return ForwardKind(batch=batch, length=length, cached=cached, has_cache=bool(found))


__all__ = ["ForwardKind", "UnknownForward", "forward_kind", "input_of"]
