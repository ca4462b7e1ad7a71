"""Helpers shared by the steerer tests: forwards, steered forwards, activation recording."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from lm_eval.api.instance import Instance
from torch import Tensor, nn

from sadi.activations import EncodedBatch, position_ids
from sadi.architectures import architecture_of, model_shape, site
from sadi.hooks import LayerHook, hooked
from sadi.steerers import Steerer

PROMPTS = ["The sky is", "Water is wet and", "Hi"]
CONTS = [" blue today", " cold", " there friend"]


def forward(model: nn.Module, batch: EncodedBatch) -> Tensor:
    kwargs = {"attention_mask": batch.attention_mask}
    if architecture_of(model).family != "bloom":  # BLOOM uses ALiBi, no position ids
        kwargs["position_ids"] = position_ids(batch.attention_mask)
    with torch.no_grad():
        return model(batch.input_ids, **kwargs).logits  # type: ignore[no-any-return]


def steered(model: nn.Module, steerer: Steerer, batch: EncodedBatch) -> Tensor:
    with steerer.apply(model) as handle:
        handle.set_layout(batch.layout)
        return forward(model, batch)


@contextmanager
def recording(model: nn.Module, component: str) -> Iterator[dict[int, Tensor]]:
    """`component` of every layer, as seen at the moment this hook runs (hooks registered
    before a steerer's see the unedited activation, hooks registered after it the edit)."""
    seen: dict[int, Tensor] = {}

    def grab(layer: int, act: Tensor) -> None:
        seen[layer] = act.detach().clone()

    n = model_shape(model).n_layers
    hooks = [LayerHook(i, grab) for i in range(n)]
    with hooked(model, site(architecture_of(model), component), hooks):
        yield seen


def count_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def loglikelihood_requests(pairs: Sequence[tuple[str, str]]) -> list[Instance]:
    """lm-eval log-likelihood requests for (context, continuation) pairs, in order."""
    return [
        Instance(request_type="loglikelihood", doc={}, arguments=a, idx=i)
        for i, a in enumerate(pairs)
    ]
