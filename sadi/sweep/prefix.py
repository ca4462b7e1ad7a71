"""Shared-prefix scoring of lm-eval log-likelihood rows under many steering conditions.

lm-eval scores a request (context, continuation) on the row
`(context + continuation)[-(max_length + 1):][:-1]`; the logits from the row's last context
token on predict the continuation. A method whose edits start at that token (SADI, ITI and
CAA under "response", SAS) leaves every earlier position exactly as the unsteered model
computes it, so a row splits into

- its head `row[:p + 1]` (p = the last context token), the same for every choice of an
  item that shares the context, for the baseline and for every sweep point. One unsteered
  forward of the head gives the KV cache of `row[:p]` (the last position is cropped off)
  and, for faithful SADI, the clean activations at p;
- its suffix `row[p:]` (the last context token and the continuation but its last token),
  run once per condition on top of that cache, with the condition's edits placed by the
  steerer's own position policy on a layout whose prompt is the suffix's first token.

A method that edits earlier positions too (AUSteer; ITI, CAA or SAS with positions="all")
cannot share a prefix with another condition: each such condition runs the heads once
under its own steering (the whole head edited as a prompt, by its own policy), and that
KV cache serves the choices of each item and its own suffixes, which it edits at every
position.

A chunk's heads (its KV cache bounded by `cache_mb`) run left-padded in micro-batches of
similar length, their caches laid side by side; suffixes are right-padded, each row given
its own cache rows and positions.
Rows whose (head, suffix) coincide are run once (as lm-eval's logits cache does for
one-token continuations). The numbers equal the per-point path's up to float rounding
(tests: within 1e-4, identical predictions, every task, batch sizes 1, 4 and auto).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache

from sadi.core.models import input_device
from sadi.sweep.heads import HeadForwards
from sadi.sweep.protocol import Condition
from sadi.sweep.rows import Row, Score, cache_keyword, split_request, takes
from sadi.sweep.suffix import SuffixForwards

# "auto" budgets: on CUDA this share of the device's free memory (at start) holds a chunk's
# KV cache (2/3) and a suffix forward's logits (1/3); on the CPU the fixed MB below
AUTO_SHARE = 0.5
CPU_MB = {"cache_mb": 256.0, "logits_mb": 128.0}


def memory_budget(
    device: torch.device,
    cache_mb: float | str = "auto",
    logits_mb: float | str = "auto",
    free_bytes: int | None = None,
) -> tuple[float, float]:
    """(cache bytes, logits bytes) the engine's chunks and suffix batches are sized to: the
    megabytes given, or for "auto" a share of the free memory of a CUDA `device`
    (`torch.cuda.mem_get_info`, or `free_bytes` where the caller knows it) and `CPU_MB`
    elsewhere."""
    out = []
    for name, value, part in (("cache_mb", cache_mb, 2 / 3), ("logits_mb", logits_mb, 1 / 3)):
        if value == "auto":
            if device.type == "cuda":
                free = torch.cuda.mem_get_info(device)[0] if free_bytes is None else free_bytes
                out.append(AUTO_SHARE * part * float(free))
            else:
                out.append(CPU_MB[name] * 2**20)
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"{name}={value!r} must be > 0 (megabytes) or 'auto'")
        out.append(float(value) * 2**20)
    return out[0], out[1]


class PrefixScorer(HeadForwards, SuffixForwards):
    """Scores rows under several conditions, computing each unsteered head once (and, for
    a condition that edits the head itself, its own steered head once).

    Args:
        model: a causal LM (eval mode); steerers are applied to it as `Steerer.apply` does.
        batch_size: heads per prefix forward and rows per suffix forward; "auto" bounds
            them by memory only (`cache_mb`, `logits_mb`).
        cache_mb: the most a chunk's KV cache (and a suffix forward's copy of it) may hold.
        logits_mb: the most a suffix forward's logits may hold.
        prefix_tokens: padded tokens per prefix forward (a chunk's heads run in
            micro-batches, each padded to its own longest head; ~16 BoolQ heads by default).
        shared_min: a chunk's heads that all begin with the same tokens (MMLU's instruction,
            TruthfulQA's six-shot prompt, a chat template's system prompt) run those once
            when there are at least this many; 0 never does.

    Attributes:
        counts: forwards and real tokens run so far ("prefix_forwards", "prefix_tokens",
            "suffix_forwards", "suffix_tokens") and the largest prefix KV cache held
            ("max_prefix_cache_bytes"), for tests and benchmarks.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        batch_size: int | str = "auto",
        cache_mb: float | str = "auto",
        logits_mb: float | str = "auto",
        prefix_tokens: int = 2048,
        shared_min: int = 8,
    ) -> None:
        if batch_size != "auto" and not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"batch_size={batch_size!r}: give a positive integer or 'auto'")
        if not (isinstance(prefix_tokens, int) and prefix_tokens >= 1):
            raise ValueError(f"prefix_tokens={prefix_tokens!r}: give a positive integer")
        self.prefix_tokens = prefix_tokens
        if not (isinstance(shared_min, int) and shared_min >= 0):
            raise ValueError(f"shared_min={shared_min!r}: give a number of tokens >= 0")
        self.shared_min = shared_min
        self.model = model
        self.base = getattr(model, "base_model", model)
        self.batch_size = batch_size
        self.cache_bytes, self.logits_bytes = memory_budget(
            input_device(model), cache_mb, logits_mb
        )
        self.counts: Counter[str] = Counter()
        self._lm_cache_kw = cache_keyword(model.forward)
        self._base_cache_kw = cache_keyword(self.base.forward)
        self._positions = takes(model.forward, "position_ids")
        self._base_positions = takes(self.base.forward, "position_ids")
        self._kv_bytes: float | None = None
        self.device = input_device(model)
        self.dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
        head: Any = getattr(model, "get_output_embeddings")()  # noqa: B009 (typed Any)
        vocab = getattr(model.config, "vocab_size", None) or head.weight.shape[0]
        self._logit_bytes = int(vocab) * torch.finfo(self.dtype).bits // 8

    # ----- planning ----------------------------------------------------------------------
    def kv_bytes_per_token(self) -> float:
        """Bytes the KV cache holds per token (measured once on a one-token forward)."""
        if self._kv_bytes is None:
            cache = DynamicCache()
            ids = torch.ones(1, 1, dtype=torch.long, device=self.device)
            with torch.no_grad():
                self.base(input_ids=ids, use_cache=True, **{self._base_cache_kw: cache})
            self._kv_bytes = float(
                sum(
                    k.numel() * k.element_size() + v.numel() * v.element_size() for k, v, _ in cache
                )
            )
        return self._kv_bytes

    def chunks(self, rows: Sequence[Row]) -> list[list[int]]:
        """Row indices grouped into chunks: rows of one head stay together, heads sorted by
        length (longest first), each chunk's cache within `cache_mb`."""
        by_head: dict[tuple[int, ...], list[int]] = {}
        for i, row in enumerate(rows):
            by_head.setdefault(row.head, []).append(i)
        heads = sorted(by_head, key=lambda h: (-len(h), h))
        per_token = self.kv_bytes_per_token()
        out: list[list[int]] = []
        current: list[tuple[int, ...]] = []
        for head in heads:
            longest = len(current[0]) if current else len(head)
            full = self.batch_size != "auto" and len(current) >= int(self.batch_size)
            if current and (full or (len(current) + 1) * longest * per_token > self.cache_bytes):
                out.append([i for h in current for i in by_head[h]])
                current = []
            current.append(head)
        if current:
            out.append([i for h in current for i in by_head[h]])
        return out

    # ----- scoring -----------------------------------------------------------------------
    @torch.no_grad()
    def score_chunk(
        self, rows: Sequence[Row], conditions: dict[str, Condition]
    ) -> dict[str, list[Score]]:
        """Scores of `rows` (one chunk) under every condition. The unsteered heads run once
        for every condition that leaves them unsteered; a condition that edits them
        (`Steerer.prefix_unshared`: AUSteer, positions="all") runs its own steered heads
        once, shared by the choices of each item."""
        heads = sorted({r.head for r in rows}, key=lambda h: (-len(h), h))
        head_index = {h: i for i, h in enumerate(heads)}
        # unique (head, suffix) rows, longest suffix first
        units = sorted(
            {(head_index[r.head], r.suffix) for r in rows}, key=lambda u: (-len(u[1]), u)
        )
        shared = {n: st for n, st in conditions.items() if st is None or not st.prefix_unshared()}
        out: dict[str, list[Score]] = {}
        passes: list[tuple[dict[str, Condition], Condition]] = []
        if shared:
            passes.append((shared, None))
        passes += [({n: st}, st) for n, st in conditions.items() if n not in shared]
        for group, prefix_steerer in passes:  # one KV cache held at a time (cache_mb)
            kv, head_mask, clean = self._prefix(heads, group, prefix_steerer)
            for name, steerer in group.items():
                out[name] = self._condition(rows, head_index, units, kv, head_mask, clean, steerer)
            del kv, head_mask, clean
        return {name: out[name] for name in conditions}


__all__ = ["Condition", "PrefixScorer", "Row", "Score", "split_request"]
