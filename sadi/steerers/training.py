"""Supervised training of a trained intervention (LoRA, LoReFT) on the fit pairs: each pair's
positive completion after its prompt, the loss on the completion tokens only, through the
same `apply` that steers scoring and generation (so what is trained is what is applied)."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from sadi.core.activations import EncodedBatch, context_limit, encode
from sadi.core.models import input_device
from sadi.data.pairs import Pair
from sadi.infra import checks

if TYPE_CHECKING:
    from sadi.steerers.base import Steerer


@dataclass(frozen=True)
class TrainingParams:
    """The training's hyperparameters: AdamW (no weight decay, a constant rate), epochs,
    the seed of the batch order, pairs per step. All of them change what is trained (they
    key the fit cache), unlike the runtime `batch_size` of other methods' reading passes."""

    lr: float
    epochs: int
    seed: int
    batch_size: int

    @classmethod
    def checked(cls, lr: float, epochs: int, seed: int, batch_size: int) -> TrainingParams:
        lr = checks.finite("lr", lr)
        if lr <= 0:
            raise ValueError(f"lr={lr} must be > 0 (e.g. intervention.lr=1e-3)")
        return cls(
            lr,
            checks.positive_int("epochs", epochs),
            checks.integer("seed", seed, minimum=0, example="intervention.seed=0"),
            checks.positive_int(
                "train_batch_size", batch_size, example="intervention.train_batch_size=8"
            ),
        )


def completion_loss(logits: Tensor, batch: EncodedBatch) -> Tensor:
    """Mean cross-entropy of the completion tokens (right-padded rows): the logits at
    positions prompt_len - 1 .. seq_len - 2 predict the tokens at prompt_len .. seq_len - 1."""
    spans = [span for span in batch.completion_logits(logits) if span is not None]
    rows, targets = [r for r, _ in spans], [t for _, t in spans]
    if not rows:
        raise ValueError("no completion tokens to train on: every positive is empty")
    return nn.functional.cross_entropy(
        torch.cat(rows).float(), torch.cat(targets).to(logits.device)
    )


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """The model's own weights take no gradient while the block runs (restored after)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def train(
    steered: Steerer[Any],
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[Pair],
    parameters: Sequence[Tensor],
    params: TrainingParams,
    *,
    progress: bool,
    desc: str,
) -> list[float]:
    """Train `parameters` (read by `steered.apply`'s edits) to predict every pair's positive
    completion; returns the mean loss of each epoch. Deterministic: a function of the model,
    the pairs, the initial parameters and `params` (the batch order is seeded)."""
    optimiser = torch.optim.AdamW(parameters, lr=params.lr, weight_decay=0.0)
    order = random.Random(f"train:{params.seed}")
    device = input_device(model)
    limit = context_limit(model)
    losses: list[float] = []
    batch_size = params.batch_size
    steps = params.epochs * ((len(pairs) + batch_size - 1) // batch_size)
    bar = tqdm(total=steps, desc=desc, disable=not progress, leave=False)
    with frozen(model), torch.enable_grad():
        for _ in range(params.epochs):
            idx = list(range(len(pairs)))
            order.shuffle(idx)
            total, n = 0.0, 0
            for start in range(0, len(idx), batch_size):
                chunk = [pairs[i] for i in idx[start : start + batch_size]]
                batch = encode(
                    tokenizer,
                    [p.prompt for p in chunk],
                    [p.positive for p in chunk],
                    max_length=limit,
                )
                with steered.apply(model) as handle:
                    handle.set_layout(batch.layout)
                    logits = model(
                        input_ids=batch.input_ids.to(device),
                        attention_mask=batch.attention_mask.to(device),
                    ).logits
                loss = completion_loss(logits, batch)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                optimiser.step()
                total, n = total + float(loss.detach()) * len(chunk), n + len(chunk)
                bar.update(1)
            losses.append(total / n)
    bar.close()
    return losses


__all__ = ["TrainingParams", "completion_loss", "frozen", "train"]
