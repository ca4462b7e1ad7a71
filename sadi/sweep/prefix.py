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

import inspect
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import DynamicCache

from sadi.core.architectures import model_site
from sadi.core.hooks import LayerHook, hooked
from sadi.core.positions import BatchLayout
from sadi.steerers.base import Steerer

Score = tuple[float, bool]  # (log-likelihood, greedy), as lm-eval's _loglikelihood_tokens
# the KV cache (per layer [1, kv heads, L, head_dim]) of the L tokens a chunk's heads share
Shared = tuple[list[tuple[Tensor, Tensor]], int]
Condition = Steerer | None  # None: the unsteered model
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


def _takes(fn: Callable[..., Any], name: str) -> bool:
    return name in inspect.signature(fn).parameters


def _micro_batches(lengths: Sequence[int], tokens: int) -> list[int]:
    """End indices of consecutive batches of `lengths` (longest first), each padded to its
    first length and holding at most `tokens` padded tokens (at least one row)."""
    ends, start = [], 0
    for i in range(1, len(lengths) + 1):
        if i == len(lengths) or (i - start + 1) * lengths[start] > tokens:
            ends.append(i)
            start = i
    return ends


class PrefixScorer:
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
        cache_mb: float = 256.0,
        logits_mb: float = 128.0,
        prefix_tokens: int = 2048,
        shared_min: int = 8,
    ) -> None:
        if batch_size != "auto" and not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"batch_size={batch_size!r}: give a positive integer or 'auto'")
        for name, value in (("cache_mb", cache_mb), ("logits_mb", logits_mb)):
            if not value > 0:
                raise ValueError(f"{name}={value!r} must be > 0 (megabytes)")
        if not (isinstance(prefix_tokens, int) and prefix_tokens >= 1):
            raise ValueError(f"prefix_tokens={prefix_tokens!r}: give a positive integer")
        self.prefix_tokens = prefix_tokens
        if not (isinstance(shared_min, int) and shared_min >= 0):
            raise ValueError(f"shared_min={shared_min!r}: give a number of tokens >= 0")
        self.shared_min = shared_min
        self.model = model
        self.base = getattr(model, "base_model", model)
        self.batch_size = batch_size
        self.cache_bytes = cache_mb * 2**20
        self.logits_bytes = logits_mb * 2**20
        self.counts: Counter[str] = Counter()
        self._lm_cache_kw = cache_keyword(model.forward)
        self._base_cache_kw = cache_keyword(self.base.forward)
        self._positions = _takes(model.forward, "position_ids")
        self._kv_bytes: float | None = None
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
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

    def _condition(
        self,
        rows: Sequence[Row],
        head_index: dict[tuple[int, ...], int],
        units: list[tuple[int, tuple[int, ...]]],
        kv: list[tuple[Tensor, Tensor]],
        head_mask: Tensor,
        clean: dict[tuple[str, int], Tensor],
        steerer: Condition,
    ) -> list[Score]:
        """One condition's scores of `rows`: its suffixes on the heads' KV cache `kv`."""
        unit_index = {u: i for i, u in enumerate(units)}
        logps: list[Tensor] = [torch.empty(0)] * len(units)
        for batch in self._suffix_batches(units, int(head_mask.shape[1])):
            for i, lp in zip(
                batch, self._suffix(units, batch, kv, head_mask, clean, steerer), strict=True
            ):
                logps[i] = lp
        scores = []
        for r in rows:
            lp = logps[unit_index[(head_index[r.head], r.suffix)]]  # [n, vocab]
            cont = torch.tensor(r.continuation, device=lp.device)
            picked = lp.gather(1, cont.unsqueeze(1)).squeeze(1)
            scores.append((float(picked.sum()), bool((lp.argmax(dim=-1) == cont).all())))
        return scores

    def _prefix(
        self,
        heads: list[tuple[int, ...]],
        conditions: dict[str, Condition],
        steerer: Condition = None,
    ) -> tuple[list[tuple[Tensor, Tensor]], Tensor, dict[tuple[str, int], Tensor]]:
        """Forwards of the heads (longest first), unsteered or under `steerer` (one whose
        edits reach the prefix): the chunk's KV cache of every position but each head's last,
        left-padded to the longest head, the heads' attention mask, and the clean
        activations at the last positions that `conditions` read.

        The heads run in micro-batches of at most `prefix_tokens` padded tokens, each padded
        only to its own longest head (a chunk spans many lengths: one padded batch of it
        computes 9-13% pad tokens on BoolQ and MMLU); their caches are then laid side by side,
        left-padded with masked zeros."""
        n, length = len(heads), len(heads[0])
        mask = torch.zeros(n, length, dtype=torch.long, device=self.device)
        for i, h in enumerate(heads):
            mask[i, length - len(h) :] = 1
        wanted: dict[str, set[int]] = {}
        for st in conditions.values():
            if st is not None and st.clean_layers():
                wanted.setdefault(st.component, set()).update(st.clean_layers())
        grabbed: dict[tuple[str, int], list[Tensor]] = {}
        kv: list[tuple[Tensor, Tensor]] = []
        shared = None if steerer is not None else self._shared_forward(heads)
        start = 0
        for stop in _micro_batches([len(h) for h in heads], self.prefix_tokens):
            part = self._prefix_forward(heads[start:stop], wanted, steerer, shared)
            for key, act in part[1].items():
                grabbed.setdefault(key, []).append(act)
            for layer, (k, v) in enumerate(part[0]):
                if layer == len(kv):
                    shape = (n, k.shape[1], length - 1, k.shape[3])
                    kv.append((k.new_zeros(shape), v.new_zeros(shape)))
                width = int(k.shape[2])  # this micro-batch's longest head, less one
                kv[layer][0][start:stop, :, length - 1 - width :] = k
                kv[layer][1][start:stop, :, length - 1 - width :] = v
            start = stop
        held = n * (length - 1) * self.kv_bytes_per_token()
        self.counts["max_prefix_cache_bytes"] = max(
            self.counts["max_prefix_cache_bytes"], int(held)
        )
        clean = {key: torch.cat(parts) for key, parts in grabbed.items()}
        return kv, mask[:, :-1], clean

    def _shared_forward(self, heads: list[tuple[int, ...]]) -> Shared | None:
        """The unsteered KV cache [1, kv heads, L, d] per layer of the tokens every head of
        the chunk begins with, and L, when L >= shared_min (L < each head's length: every
        head keeps its last token, whose activations the suffix and faithful SADI need)."""
        if self.shared_min == 0 or len(heads) < 2:
            return None
        first, common = heads[0], min(len(h) for h in heads) - 1
        for h in heads[1:]:
            common = next((i for i in range(common) if h[i] != first[i]), common)
        if common < self.shared_min:
            return None
        cache = DynamicCache()
        ids = torch.tensor([first[:common]], device=self.device)
        with torch.no_grad():
            self.base(input_ids=ids, use_cache=True, **{self._base_cache_kw: cache})
        self.counts["prefix_forwards"] += 1
        self.counts["prefix_tokens"] += common
        self.counts["shared_tokens"] += common * (len(heads) - 1)  # not computed again
        layers = [(k, v) for k, v, _ in cache]
        for k, _ in layers:
            self._check_cache(k, common)
        return layers, common

    def _check_cache(self, k: Tensor | None, length: int) -> None:
        if k is None or k.dim() != 4 or int(k.shape[-2]) != length:
            got = None if k is None else tuple(k.shape)
            raise RuntimeError(
                f"the KV cache of a {length}-token prefix holds {got} per layer, not "
                "[batch, heads, positions, dim]; this model's cache is not "
                "one the sweep engine understands: run with sweep.engine=false"
            )

    def _prefix_forward(
        self,
        heads: list[tuple[int, ...]],
        wanted: dict[str, set[int]],
        steerer: Condition = None,
        shared: Shared | None = None,
    ) -> tuple[list[tuple[Tensor, Tensor]], dict[tuple[str, int], Tensor]]:
        """One forward of left-padded heads (unsteered, or under `steerer`, which places
        its edits on the heads as prompts by its own policy): per layer the KV cache of
        every position but the last (pad positions zeroed), and the `wanted` clean
        activations at the last position. With `shared` (the cache of the first L tokens
        every head begins with), only each head's remaining tokens run, on that cache."""
        if shared is not None:
            return self._prefix_forward_on(heads, wanted, shared)
        n, length = len(heads), len(heads[0])
        ids = torch.full((n, length), PAD, dtype=torch.long)
        mask = torch.zeros(n, length, dtype=torch.long)
        for i, h in enumerate(heads):
            ids[i, length - len(h) :] = torch.tensor(h)
            mask[i, length - len(h) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        cache = DynamicCache()
        call: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "use_cache": True}
        if _takes(self.base.forward, "position_ids"):
            call["position_ids"] = (mask.cumsum(1) - 1).clamp(min=0)
        clean = self._run(call, cache, wanted, steerer)
        self.counts["prefix_tokens"] += int(mask.sum())
        keep = mask[:, : length - 1].bool()[:, None, :, None]
        kv = []
        for k, v, _ in cache:
            self._check_cache(k, length)
            # pad positions are masked later; zero them so no NaN of theirs can leak in
            kv.append((k[:, :, :-1].where(keep, 0.0), v[:, :, :-1].where(keep, 0.0)))
        return kv, clean

    def _prefix_forward_on(
        self, heads: list[tuple[int, ...]], wanted: dict[str, set[int]], shared: Shared
    ) -> tuple[list[tuple[Tensor, Tensor]], dict[tuple[str, int], Tensor]]:
        """`_prefix_forward` of heads that all begin with the `shared` tokens: their
        remainders run left-padded on the shared cache; each row's cache is then its shared
        part and its remainder's, right-aligned as `_prefix_forward` lays it out."""
        past, common = shared
        n = len(heads)
        rest = [len(h) - common for h in heads]  # >= 1 each
        width = max(rest)
        ids = torch.full((n, width), PAD, dtype=torch.long)
        mask = torch.zeros(n, common + width, dtype=torch.long)
        mask[:, :common] = 1
        for i, h in enumerate(heads):
            ids[i, width - rest[i] :] = torch.tensor(h[common:])
            mask[i, common + width - rest[i] :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        cache = DynamicCache(
            ddp_cache_data=[(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in past]
        )
        call: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "use_cache": True}
        if _takes(self.base.forward, "position_ids"):
            call["position_ids"] = (mask.cumsum(1) - 1).clamp(min=0)[:, common:]
        clean = self._run(call, cache, wanted, None)
        self.counts["prefix_tokens"] += sum(rest)
        # row i's cache, right-aligned in `out` positions: the shared part, then its
        # remainder but its last token
        out = common + width - 1
        index = torch.zeros(n, out, dtype=torch.long)
        keep = torch.zeros(n, out, dtype=torch.bool)
        for i, r in enumerate(rest):
            real = list(range(common)) + list(range(common + width - r, common + width - 1))
            index[i, out - len(real) :] = torch.tensor(real, dtype=torch.long)
            keep[i, out - len(real) :] = True
        index, keep = index.to(self.device), keep.to(self.device)[:, None, :, None]
        kv = []
        for k, v, _ in cache:
            self._check_cache(k, common + width)
            at = index[:, None, :, None].expand(n, k.shape[1], out, k.shape[3])
            kv.append((k.gather(2, at).where(keep, 0.0), v.gather(2, at).where(keep, 0.0)))
        return kv, clean

    def _run(
        self,
        call: dict[str, Any],
        cache: DynamicCache,
        wanted: dict[str, set[int]],
        steerer: Condition,
    ) -> dict[tuple[str, int], Tensor]:
        """Run the base model on `call` with `cache`; the `wanted` activations at the last
        position (the rows' last tokens: they are right-aligned)."""
        clean: dict[tuple[str, int], Tensor] = {}

        def grabber(component: str) -> Callable[[int, Tensor], None]:
            def grab(layer: int, act: Tensor) -> None:
                clean[(component, layer)] = act[:, -1].detach().clone()

            return grab

        with ExitStack() as stack:
            if steerer is not None:
                stack.enter_context(steerer.apply(self.model))
            for component, layers in wanted.items():
                site = model_site(self.model, component)
                hooks = [LayerHook(layer, grabber(component)) for layer in sorted(layers)]
                stack.enter_context(hooked(self.model, site, hooks))
            self.base(**call, **{self._base_cache_kw: cache})
        self.counts["prefix_forwards"] += 1
        return clean

    def _suffix_batches(
        self, units: list[tuple[int, tuple[int, ...]]], cached: int
    ) -> list[list[int]]:
        per_token = self.kv_bytes_per_token()
        out: list[list[int]] = []
        current: list[int] = []
        for i, (_, suffix) in enumerate(units):
            longest = len(units[current[0]][1]) if current else len(suffix)
            rows = len(current) + 1
            full = self.batch_size != "auto" and len(current) >= int(self.batch_size)
            big = (
                rows * longest * self._logit_bytes > self.logits_bytes
                or rows * (cached + longest) * per_token > self.cache_bytes
            )
            if current and (full or big):
                out.append(current)
                current = []
            current.append(i)
        if current:
            out.append(current)
        return out

    def _suffix(
        self,
        units: list[tuple[int, tuple[int, ...]]],
        batch: list[int],
        kv: list[tuple[Tensor, Tensor]],
        head_mask: Tensor,
        clean: dict[tuple[str, int], Tensor],
        steerer: Condition,
    ) -> list[Tensor]:
        """Log-probabilities [suffix length, vocab] of each unit in `batch` under `steerer`."""
        heads = torch.tensor([units[i][0] for i in batch], device=self.device)
        lengths = [len(units[i][1]) for i in batch]
        width = max(lengths)
        ids = torch.full((len(batch), width), PAD, dtype=torch.long)
        suffix_mask = torch.zeros(len(batch), width, dtype=torch.long)
        for j, i in enumerate(batch):
            ids[j, : lengths[j]] = torch.tensor(units[i][1])
            suffix_mask[j, : lengths[j]] = 1
        ids, suffix_mask = ids.to(self.device), suffix_mask.to(self.device)
        past = head_mask[heads]
        call: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": torch.cat([past, suffix_mask], dim=1),
        }
        if self._positions:
            start = past.sum(dim=1, keepdim=True)
            call["position_ids"] = start + torch.arange(width, device=self.device).unsqueeze(0)
        if past.shape[1] > 0:
            if heads.tolist() == list(range(int(head_mask.shape[0]))):
                layers = kv  # every head in order: no copy (the forward concatenates anew)
            else:
                layers = [(k[heads], v[heads]) for k, v in kv]
            cache = DynamicCache(ddp_cache_data=layers)
            call.update({"use_cache": True, self._lm_cache_kw: cache})
        else:
            call["use_cache"] = False
        with ExitStack() as stack:
            if steerer is not None:
                handle = stack.enter_context(steerer.apply(self.model))
                layout = BatchLayout(
                    seq_lengths=torch.tensor(lengths),
                    prompt_lengths=torch.ones(len(batch), dtype=torch.long),
                    padded_length=width,
                    padding_side="right",
                )
                handle.continue_prefix(
                    layout,
                    {
                        layer: clean[(steerer.component, layer)][heads]
                        for layer in steerer.clean_layers()
                    },
                )
            logits = self.model(**call).logits
        self.counts["suffix_forwards"] += 1
        self.counts["suffix_tokens"] += sum(lengths)
        logp = torch.log_softmax(logits, dim=-1)
        return [logp[j, : lengths[j]] for j in range(len(batch))]


__all__ = ["PAD", "Condition", "PrefixScorer", "Row", "Score", "cache_keyword", "split_request"]
