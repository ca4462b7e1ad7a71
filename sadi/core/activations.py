"""Tokenise prompt + completion batches and read a component's activations at one position."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from sadi.core.architectures import ModelShape, decoder_layers, model_site
from sadi.core.hooks import LayerHook, hooked
from sadi.core.models import input_device
from sadi.core.positions import BatchLayout, PaddingSide, PositionPolicy


def join_completion(prompt: str, completion: str) -> str:
    """The completion as appended to the prompt: a space is inserted unless one is there."""
    if not completion or completion[0].isspace() or (prompt and prompt[-1].isspace()):
        return completion
    return " " + completion


def context_limit(model: nn.Module) -> int | None:
    """The model's maximum sequence length, when its config states one."""
    for attr in ("max_position_embeddings", "n_positions", "seq_length"):
        value = getattr(model.config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


@dataclass(frozen=True)
class EncodedBatch:
    input_ids: Tensor  # [batch, pos]
    attention_mask: Tensor  # [batch, pos]
    layout: BatchLayout

    def completion_logits(self, logits: Tensor) -> list[tuple[Tensor, Tensor] | None]:
        """Per row, (the logits that predict its completion tokens, those tokens): the
        logits at prompt_len - 1 .. seq_len - 2 predict the tokens at prompt_len ..
        seq_len - 1 (right padding); None for a row with an empty completion."""
        out: list[tuple[Tensor, Tensor] | None] = []
        for i in range(self.layout.batch_size):
            lo, hi = int(self.layout.prompt_lengths[i]), int(self.layout.seq_lengths[i])
            rows = logits[i, lo - 1 : hi - 1]
            out.append((rows, self.input_ids[i, lo:hi].to(logits.device)) if hi > lo else None)
        return out


def encode(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    completions: Sequence[str] | None = None,
    *,
    padding_side: str = "right",
    max_length: int | None = None,
) -> EncodedBatch:
    """Encode prompt (+ completion) rows, padded to one length, with their layout.

    Prompt and completion are tokenised separately and concatenated (as lm-eval does), so
    the prompt boundary is exact. Rows longer than `max_length` raise instead of being
    silently truncated or dropped.
    """
    rows: list[list[int]] = []
    prompt_lens: list[int] = []
    for i, prompt in enumerate(prompts):
        ids = list(tokenizer(prompt)["input_ids"])
        prompt_lens.append(len(ids))
        if completions is not None:
            cont = join_completion(prompt, completions[i])
            ids += list(tokenizer(cont, add_special_tokens=False)["input_ids"])
        if max_length is not None and len(ids) > max_length:
            raise ValueError(
                f"row {i} has {len(ids)} tokens, longer than the model's context of "
                f"{max_length}; shorten the prompt (first 60 chars: {prompt[:60]!r}) or drop "
                "the item explicitly before fitting"
            )
        if not ids:
            raise ValueError(f"row {i} tokenises to nothing: {prompt!r}")
        rows.append(ids)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(0, len(r)) if padding_side == "right" else slice(width - len(r), width)
        input_ids[i, span] = torch.tensor(r)
        mask[i, span] = 1
    layout = BatchLayout(
        seq_lengths=mask.sum(1),
        prompt_lengths=torch.tensor(prompt_lens),
        padded_length=width,
        padding_side="right" if padding_side == "right" else "left",
    )
    return EncodedBatch(input_ids, mask, layout)


def position_ids(attention_mask: Tensor) -> Tensor:
    """Position ids that count real tokens only, so left padding does not shift positions."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def read_activations(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    completions: Sequence[str] | None,
    component: str,
    shape: ModelShape,
    *,
    policy: PositionPolicy = "last_token",
    offset: int = 0,
    batch_size: int = 16,
    progress: bool = True,
    padding_side: PaddingSide = "right",
    desc: str = "reading activations",
) -> Tensor:
    """Activations of `component` at one position per row, for every layer.

    `offset` moves the read cell left of the policy's cell (see `BatchLayout.indices`).
    Rows are sorted by length so batches carry little padding; the lm head is skipped
    (the base model is called), since only intermediate activations are read. Under
    `padding_side="left"` position ids that count real tokens only are passed (to models
    whose forward takes them; ALiBi models read positions off the mask), so either side
    gives the activations of the unpadded rows.

    Returns:
        float32 tensor [rows, layers, width], in the order of `prompts`.
    """
    hook_site = model_site(model, component)
    n_layers = len(decoder_layers(model))
    limit = context_limit(model)
    device = input_device(model)
    lengths = [
        len(tokenizer(p + (join_completion(p, c) if completions else ""))["input_ids"])
        for p, c in zip(prompts, completions or [""] * len(prompts))
    ]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    out = torch.empty(len(prompts), n_layers, shape.width(component))
    buffer: dict[int, Tensor] = {}
    cells: list[tuple[Tensor, Tensor]] = []

    def grab(layer: int, act: Tensor) -> None:  # act: [batch, pos, width]
        rows, pos = cells[0]
        buffer[layer] = act[rows.to(act.device), pos.to(act.device)].float().cpu()

    hooks = [LayerHook(layer, grab) for layer in range(n_layers)]
    base = getattr(model, "base_model", model)
    takes_positions = "position_ids" in inspect.signature(base.forward).parameters
    with hooked(model, hook_site, hooks):
        for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress):
            idx = order[start : start + batch_size]
            batch = encode(
                tokenizer,
                [prompts[i] for i in idx],
                [completions[i] for i in idx] if completions is not None else None,
                padding_side=padding_side,
                max_length=limit,
            )
            cells[:] = [batch.layout.indices(policy, offset)]
            extra = {}
            if padding_side == "left" and takes_positions:
                extra["position_ids"] = position_ids(batch.attention_mask).to(device)
            base(
                input_ids=batch.input_ids.to(device),
                attention_mask=batch.attention_mask.to(device),
                use_cache=False,
                **extra,
            )
            out[idx] = torch.stack([buffer[layer] for layer in range(n_layers)], dim=1)
            buffer.clear()
    return out


class ContrastivePair(Protocol):
    """A prompt with a positive and a negative completion (`sadi.data.pairs.Pair`)."""

    @property
    def prompt(self) -> str: ...

    @property
    def positive(self) -> str: ...

    @property
    def negative(self) -> str: ...


def read_pair_activations(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[ContrastivePair],
    component: str,
    shape: ModelShape,
    *,
    offset: int = 0,
    batch_size: int = 16,
    progress: bool = True,
    padding_side: PaddingSide = "right",
    desc: str = "reading activations",
) -> tuple[Tensor, Tensor]:
    """`component` of every layer at the last token (`offset` moves it left) of prompt +
    positive and of prompt + negative, for every pair: what every method fits from.

    Returns:
        (positives, negatives), float32 tensors [pairs, layers, width] each.
    """
    prompts = [p.prompt for p in pairs]
    acts = read_activations(
        model,
        tokenizer,
        prompts * 2,
        [p.positive for p in pairs] + [p.negative for p in pairs],
        component,
        shape,
        policy="last_token",
        offset=offset,
        batch_size=batch_size,
        progress=progress,
        padding_side=padding_side,
        desc=desc,
    )  # [2 * pairs, layers, width]
    return acts[: len(pairs)], acts[len(pairs) :]
