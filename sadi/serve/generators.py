"""What `sadi serve` generates with: vLLM (`sadi.vllm`, every request of a batch under its own
steerer) or the HF model (hooks; a batch runs one steerer group at a time). Both take a
batch of `Generation`s and return a `Completion` each."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from sadi.core.models import input_device
from sadi.steerers.base import Steerer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Generation:
    """One completion to make: prompt tokens, the steerer (None: unsteered), sampling."""

    tokens: list[int]
    steerer: str | None = None
    max_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class Completion:
    text: str
    tokens: list[int] = field(default_factory=list)
    finish_reason: str = "length"  # "stop": an end token or a stop string ended it


class Generator(Protocol):
    backend: str

    def generate(self, batch: Sequence[Generation]) -> list[Completion]: ...


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the first stop string, and whether one was found."""
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


class HFGenerator:
    """Generation on the HF model under each request's steerer (`Steerer.apply`)."""

    backend = "hf"

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        steerers: dict[str, Steerer[Any]],
    ) -> None:
        self.model, self.tokenizer, self.steerers = model, tokenizer, steerers

    @torch.no_grad()
    def _one(self, g: Generation) -> Completion:
        device = input_device(self.model)
        ids = torch.tensor([g.tokens], device=device)
        kwargs: dict[str, Any] = {
            "max_new_tokens": g.max_tokens,
            "do_sample": g.temperature > 0,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if g.temperature > 0:
            kwargs.update(temperature=g.temperature, top_p=g.top_p, top_k=0)
            if g.seed is not None:
                torch.manual_seed(g.seed)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        steerer = None if g.steerer is None else self.steerers[g.steerer]
        generate: Any = self.model.generate
        with nullcontext() if steerer is None else steerer.apply(self.model):
            out = generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
        new = out[0, len(g.tokens) :].tolist()
        eos = self.tokenizer.eos_token_id
        ended = eos in new
        if ended:
            new = new[: new.index(eos)]
        decoded = str(self.tokenizer.decode(new, skip_special_tokens=True))
        text, stopped = cut_at_stop(decoded, g.stop)
        return Completion(text, new, "stop" if ended or stopped else "length")

    def generate(self, batch: Sequence[Generation]) -> list[Completion]:
        # one request at a time: rows of one padded batch would not be the unpadded prompt's
        # tokens bit for bit, and each may run under another steerer
        return [self._one(g) for g in batch]


class VLLMGenerator:
    """Generation in vLLM: the whole batch in one call, each request under its steerer."""

    backend = "vllm"

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def generate(self, batch: Sequence[Generation]) -> list[Completion]:
        from vllm import SamplingParams

        from sadi.vllm.engine import Request

        params = [
            SamplingParams(
                max_tokens=g.max_tokens,
                temperature=g.temperature,
                top_p=g.top_p,
                seed=g.seed,
                stop=list(g.stop) or None,
            )
            for g in batch
        ]
        outs = self.engine.generate([Request(g.tokens, g.steerer) for g in batch], params)
        done = []
        for o in outs:
            c = o.outputs[0]
            reason = "stop" if c.finish_reason == "stop" else "length"
            done.append(Completion(c.text, list(c.token_ids), reason))
        return done


__all__ = ["Completion", "Generation", "Generator", "HFGenerator", "VLLMGenerator", "cut_at_stop"]
