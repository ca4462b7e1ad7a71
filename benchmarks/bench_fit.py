"""fit: SADI and AUSteer fits on 150 COPA pairs vs a plain batched forward over the same
300 sequences.

Sides, interleaved in one run (see `benchmarks.common.interleaved`):

- `fit`: `SADI("head", k=4, strength=5.0).fit(model, tok, pairs)`, everything included
  (tokenising, sorting by length, hooked forwards of the base model, stacking, top-K).
- `austeer_fit`: `AUSteer("head", k=100).fit(model, tok, pairs)` (activation momentum of
  every o_proj-input dimension of every layer), everything included likewise.
- `plain_full`: the full model (`model(input_ids, attention_mask=...)`, lm head included,
  no hooks) over the 300 rows prompt + positive, prompt + negative in pair order, batches of
  16, tokenised beforehand (tokenising is not timed on this side).
- `plain_base`: the base model without the lm head (`model.base_model(...)`,
  `use_cache=False`) over exactly the batches fit builds (same length-sorted order), also
  tokenised beforehand: the fairest baseline, the cost of fit's forwards with no hooks.

Targets: fit / plain_full <= 1.15 and austeer_fit / plain_full <= 1.15; the ratios to
plain_base are reported as second figures.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from benchmarks.common import (
    environment,
    interleaved,
    load_default_model,
    loadavg,
    paired_ratio_median,
    summary,
    write_result,
)
from sadi.core.activations import EncodedBatch, context_limit, encode, join_completion
from sadi.data.pairs import Pair, make_pairs
from sadi.data.tasks import load_task
from sadi.steerers import SADI, AUSteer

NAME = "fit"
TARGET = 1.15
N_PAIRS = 150
BATCH_SIZE = 16
DEFAULT_REPEATS = 5
AUSTEER_K = 100
WARMUP = 1


def copa_pairs(n_pairs: int = N_PAIRS, seed: int = 0) -> list[Pair]:
    return make_pairs(load_task("copa").splits["fit"], n_pairs=n_pairs, seed=seed)


def _batches(
    tok: PreTrainedTokenizerBase,
    prompts: list[str],
    completions: list[str],
    order: list[int],
    limit: int | None,
) -> list[EncodedBatch]:
    return [
        encode(
            tok,
            [prompts[i] for i in order[s : s + BATCH_SIZE]],
            [completions[i] for i in order[s : s + BATCH_SIZE]],
            max_length=limit,
        )
        for s in range(0, len(order), BATCH_SIZE)
    ]


def run(
    repeats: int | None = None,
    model: nn.Module | None = None,
    tok: PreTrainedTokenizerBase | None = None,
    out_dir: Path | None = None,
    max_wait_s: float = 10.0,
) -> dict[str, Any]:
    """Measure fit vs plain forwards; write `<out_dir>/fit.json` and return its content."""
    if model is None or tok is None:
        model, tok = load_default_model()
    n_repeats = repeats or DEFAULT_REPEATS
    env = environment()
    pairs = copa_pairs()
    prompts = [p.prompt for p in pairs] * 2
    completions = [p.positive for p in pairs] + [p.negative for p in pairs]
    limit = context_limit(model)
    # plain_full: pair order (positives, then negatives), as a user would batch them
    natural = _batches(tok, prompts, completions, list(range(len(prompts))), limit)
    # plain_base: exactly fit's batches (sorted by length, longest first, as read_activations)
    lengths = [
        len(tok(p + join_completion(p, c))["input_ids"]) for p, c in zip(prompts, completions)
    ]
    fit_order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    sorted_batches = _batches(tok, prompts, completions, fit_order, limit)
    base = getattr(model, "base_model", model)

    def side_fit() -> None:
        with torch.inference_mode():
            SADI("head", k=4, strength=5.0, batch_size=BATCH_SIZE, progress=False).fit(
                model, tok, pairs
            )

    def side_plain_full() -> None:
        with torch.inference_mode():
            for b in natural:
                model(b.input_ids, attention_mask=b.attention_mask)

    def side_plain_base() -> None:
        with torch.inference_mode():
            for b in sorted_batches:
                base(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)

    def side_austeer_fit() -> None:
        with torch.inference_mode():
            AUSteer("head", k=AUSTEER_K, batch_size=BATCH_SIZE, progress=False).fit(
                model, tok, pairs
            )

    sides: dict[str, Callable[[], object]] = {
        "fit": side_fit,
        "austeer_fit": side_austeer_fit,
        "plain_full": side_plain_full,
        "plain_base": side_plain_base,
    }
    timings = interleaved(
        sides,
        repeats=n_repeats,
        warmup=WARMUP,
        max_wait_s=max_wait_s,
        total_wait_s=4 * max_wait_s,
    )
    times = timings.times
    med = {k: summary(v)["median_s"] for k, v in times.items()}
    ratio = med["fit"] / med["plain_full"]
    ratio_base = med["fit"] / med["plain_base"]
    au_ratio = med["austeer_fit"] / med["plain_full"]
    austeer = {
        "component": "head",
        "k": AUSTEER_K,
        "ratio": au_ratio,
        "ratio_definition": "median(austeer_fit) / median(plain_full)",
        "paired_ratio_median": paired_ratio_median(times["austeer_fit"], times["plain_full"]),
        "ratio_vs_base": med["austeer_fit"] / med["plain_base"],
        "target": TARGET,
        "meets_target": au_ratio <= TARGET,
        "quiet_only": {
            "vs_plain_full": timings.quiet_ratio("austeer_fit", "plain_full"),
            "vs_plain_base": timings.quiet_ratio("austeer_fit", "plain_base"),
        },
    }
    tokens = {
        "natural_order_padded_tokens": sum(int(b.input_ids.numel()) for b in natural),
        "fit_order_padded_tokens": sum(int(b.input_ids.numel()) for b in sorted_batches),
        "real_tokens": sum(lengths),
    }
    result: dict[str, Any] = {
        "benchmark": NAME,
        "description": (
            "SADI fit (head, k=4) and AUSteer fit (head, every dimension) on 150 COPA fit "
            "pairs vs plain batched forwards over the same 300 sequences, batch size 16"
        ),
        **env,
        "loadavg_at_end": loadavg(),
        "setup": {
            "n_pairs": len(pairs),
            "n_sequences": len(prompts),
            "batch_size": BATCH_SIZE,
            "component": "head",
            "k": 4,
            "grad_mode": "torch.inference_mode on every side",
            **tokens,
        },
        "repeats": n_repeats,
        "warmup": WARMUP,
        "times_s": times,
        "stats": {k: summary(v) for k, v in times.items()},
        "medians_s": med,
        "ratio": ratio,
        "ratio_definition": "median(fit) / median(plain_full)",
        "paired_ratio_median": paired_ratio_median(times["fit"], times["plain_full"]),
        "ratio_vs_base": ratio_base,
        "ratio_vs_base_definition": "median(fit) / median(plain_base)",
        "paired_ratio_vs_base_median": paired_ratio_median(times["fit"], times["plain_base"]),
        "target": TARGET,
        "meets_target": ratio <= TARGET and au_ratio <= TARGET,
        "sadi_meets_target": ratio <= TARGET,
        "austeer": austeer,
        "contention": timings.contention(),
        "quiet_only": {
            "definition": "the same ratios over the rounds in which no side was contended",
            "fit_vs_plain_full": timings.quiet_ratio("fit", "plain_full"),
            "fit_vs_plain_base": timings.quiet_ratio("fit", "plain_base"),
        },
    }
    write_result(NAME, result, out_dir)
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
