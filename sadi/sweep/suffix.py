"""The suffixes of a chunk's rows (each row's last context token and its continuation),
run per condition on the heads' KV cache, with the condition's edits placed by the steerer's
own position policy; their log-probabilities give the scores."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

import torch
from torch import Tensor, nn
from transformers import DynamicCache

from sadi.core.positions import BatchLayout
from sadi.sweep.protocol import Condition
from sadi.sweep.rows import PAD, Row, Score


class SuffixForwards:
    """`PrefixScorer`'s suffix forwards (its attributes are set by its constructor)."""

    model: nn.Module
    device: torch.device
    counts: Counter[str]
    batch_size: int | str
    cache_bytes: float
    logits_bytes: float
    _logit_bytes: int
    _lm_cache_kw: str
    _positions: bool

    def kv_bytes_per_token(self) -> float:
        raise NotImplementedError

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
        sums, greedy = [], []
        for r in rows:  # on the device; one transfer to the host for the whole chunk
            lp = logps[unit_index[(head_index[r.head], r.suffix)]]  # [n, vocab]
            cont = torch.tensor(r.continuation, device=lp.device)
            sums.append(lp.gather(1, cont.unsqueeze(1)).sum())
            greedy.append((lp.argmax(dim=-1) == cont).all())
        if not rows:
            return []
        values = torch.stack(sums).double().cpu().tolist()
        flags = torch.stack(greedy).cpu().tolist()
        return [(float(v), bool(g)) for v, g in zip(values, flags, strict=True)]

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
        head_list = [units[i][0] for i in batch]
        heads = torch.tensor(head_list, device=self.device)
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
            if head_list == list(range(int(head_mask.shape[0]))):  # no device sync
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
