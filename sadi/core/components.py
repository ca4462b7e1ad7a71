"""The names of the steerable components (torch-free; where each lives per architecture is
`sadi.core.architectures`)."""

from __future__ import annotations

from typing import Literal, get_args

ComponentName = Literal["head", "neuron", "neuron_down", "hidden", "residual"]
COMPONENTS: tuple[str, ...] = get_args(ComponentName)

__all__ = ["COMPONENTS", "ComponentName"]
