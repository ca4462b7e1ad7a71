"""Judge-free scores of generations: perplexity under the unsteered model (a fluency proxy),
distinct-n, length, and the share of generations that repeat one token (a collapsed model's
`leanor leanor leanor`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from sadi.core.activations import context_limit, encode
from sadi.core.models import input_device

REPEAT_RUN = 4  # a token repeated this many times in a row makes a generation "repeating"


def distinct_n(token_lists: Sequence[Sequence[int]], n: int) -> float:
    """Distinct n-grams over all generations / all n-grams (1.0: no n-gram twice; 0 when
    there is no n-gram at all)."""
    grams = [tuple(t[i : i + n]) for t in token_lists for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repeats_one_token(tokens: Sequence[int], run: int = REPEAT_RUN) -> bool:
    """Whether one token occurs `run` or more times in a row."""
    count, last = 0, None
    for t in tokens:
        count = count + 1 if t == last else 1
        last = t
        if count >= run:
            return True
    return False


@torch.no_grad()
def perplexities(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    generations: Sequence[str],
    batch_size: int = 8,
) -> list[float | None]:
    """exp(mean NLL) of each generation given its prompt under `model` (None for an empty
    generation)."""
    device = input_device(model)
    out: list[float | None] = []
    limit = context_limit(model)
    for start in range(0, len(prompts), batch_size):
        batch = encode(
            tokenizer,
            list(prompts[start : start + batch_size]),
            list(generations[start : start + batch_size]),
            max_length=limit,
        )
        logits = model(
            input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device)
        ).logits.float()
        for span in batch.completion_logits(logits):
            if span is None:
                out.append(None)
                continue
            rows, targets = span
            nll = -torch.log_softmax(rows, dim=-1).gather(-1, targets[:, None]).mean()
            out.append(math.exp(float(nll)))
    return out


def text_stats(
    tokenizer: PreTrainedTokenizerBase,
    generations: Sequence[str],
    ppl: Sequence[float | None] | None = None,
) -> dict[str, Any]:
    """The judge-free figures of a set of generations (means over generations)."""
    tokens = [list(tokenizer(g, add_special_tokens=False)["input_ids"]) for g in generations]
    n = max(len(generations), 1)
    stats: dict[str, Any] = {
        "n": len(generations),
        "length_tokens": sum(len(t) for t in tokens) / n,
        "distinct_1": distinct_n(tokens, 1),
        "distinct_2": distinct_n(tokens, 2),
        "repeat_share": sum(repeats_one_token(t) for t in tokens) / n,
    }
    if ppl is not None:
        finite = [p for p in ppl if p is not None]
        stats["perplexity"] = sum(finite) / len(finite) if finite else None
    return stats


__all__ = ["distinct_n", "perplexities", "repeats_one_token", "text_stats"]
