"""What the sweep engine asks of a steerer, and nothing more (`PrefixSteerer`).

The engine scores many conditions of one fit on shared unsteered prefixes. From a steerer
it needs:

- `prefix_unshared()`: None when the steerer's edits start at the last prompt token (so
  every earlier position equals the unsteered model's and the prefix can be shared), else
  why not (the engine then runs that condition's own steered prefix);
- `clean_layers()` and `component`: the layers whose unsteered activation at the last
  prompt token the steerer reads (faithful SADI); the engine takes them from its cached
  prefix pass;
- `apply(model)`: the steerer's hooks, whose handle's `continue_prefix(layout, clean)`
  says that the following forwards continue cached prefixes (rows start at their last
  prompt token) and hands over those clean activations (the steerer's `use_clean`);
- `params()` and `method`: a condition's name (`sadi.sweep.plan.condition_name`), and
  `with_params(**changes)` / `apply_params` for a sweep's other points of the fit.

`sadi.steerers.base.Steerer` implements all of it; nothing else of a steerer is read.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol

from torch import Tensor, nn

from sadi.core.positions import BatchLayout


class PrefixHandle(Protocol):
    """The handle `apply` gives: the engine's suffix forwards continue cached prefixes."""

    def continue_prefix(self, layout: BatchLayout, clean: dict[int, Tensor]) -> None: ...


class PrefixSteerer(Protocol):
    """A steerer as the sweep engine sees it (see the module docstring)."""

    component: str

    @property
    def method(self) -> str: ...

    def prefix_unshared(self) -> str | None: ...

    def clean_layers(self) -> list[int]: ...

    def apply(self, model: nn.Module) -> AbstractContextManager[PrefixHandle]: ...

    def params(self) -> dict[str, Any]: ...


Condition = PrefixSteerer | None  # None: the unsteered model

__all__ = ["Condition", "PrefixHandle", "PrefixSteerer"]
