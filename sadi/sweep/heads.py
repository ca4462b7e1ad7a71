"""The heads of a chunk of rows (every token up to each row's last context token) run once,
unsteered or under a steerer that edits them: their KV cache, laid side by side, and the
clean activations faithful SADI reads; tokens every head begins with run once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import torch
from torch import Tensor, nn
from transformers import DynamicCache

from sadi.core.activations import position_ids
from sadi.core.architectures import model_site
from sadi.core.hooks import LayerHook, hooked
from sadi.sweep.protocol import Condition
from sadi.sweep.rows import PAD, Shared, micro_batches


class HeadForwards:
    """`PrefixScorer`'s forwards of the heads (its attributes are set by its constructor)."""

    model: nn.Module
    base: nn.Module
    device: torch.device
    counts: Counter[str]
    prefix_tokens: int
    shared_min: int
    _base_cache_kw: str
    _base_positions: bool

    def kv_bytes_per_token(self) -> float:
        raise NotImplementedError

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
        for stop in micro_batches([len(h) for h in heads], self.prefix_tokens):
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
        if self._base_positions:
            call["position_ids"] = position_ids(mask)
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
        if self._base_positions:
            call["position_ids"] = position_ids(mask)[:, common:]
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
