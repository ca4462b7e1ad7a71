"""Checks of single values, shared by every constructor and config check: each names the
value, what it must be and, where given, an example of a good one. All raise ValueError."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def _example(example: str | None) -> str:
    return f"; e.g. {example}" if example else ""


def integer(
    name: str, value: Any, *, minimum: int | None = None, example: str | None = None
) -> int:
    """`value` as an int (never a bool), at least `minimum` when given."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or (minimum is not None and value < minimum)
    ):
        what = {None: "an integer", 0: "a non-negative integer", 1: "a positive integer"}.get(
            minimum, f"an integer >= {minimum}"
        )
        raise ValueError(f"{name} must be {what}, got {value!r}{_example(example)}")
    return int(value)


def positive_int(name: str, value: Any, example: str | None = None) -> int:
    return integer(name, value, minimum=1, example=example)


def layer_in_range(layer: int, n_layers: int, name: str = "layer") -> int:
    """`layer` as a decoder layer index of a model with `n_layers` layers."""
    if not 0 <= layer < n_layers:
        raise ValueError(
            f"{name}={layer} is out of range: the model has {n_layers} decoder layers; "
            f"choose 0 <= {name} <= {n_layers - 1}"
        )
    return layer


def finite(name: str, value: Any) -> float:
    """`value` as a finite float (an int is accepted; a bool is not)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def fraction(name: str, value: Any) -> float:
    """A finite number strictly between 0 and 1."""
    value = finite(name, value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be a fraction strictly between 0 and 1, got {value!r}")
    return value


def choice(name: str, value: Any, choices: Sequence[Any], hint: str = "") -> Any:
    """`value`, one of `choices`; `hint` says what the choices mean."""
    if value not in choices:
        raise ValueError(
            f"{name} must be one of {list(choices)}, got {value!r}" + (f"; {hint}" if hint else "")
        )
    return value


def boolean(name: str, value: Any) -> bool:
    """A bool, or "true"/"false" (strings from a command line such as lm-eval's)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"{name} must be true or false, got {value!r}")


__all__ = ["boolean", "choice", "finite", "fraction", "integer", "positive_int"]
