"""What a steering method declares about itself, once (torch-free).

Each method class sets `spec = MethodSpec(...)`. Everything that needs to know a method reads
it from there: the Hydra schema of its parameters, config validation (the components it
steers), the sweep engine (which parameters a sweep varies without refitting), selection's
tie-break (the weakest intervention), the report's axes, behaviour curves (the strength at
which the method is the unsteered model) and plots. A run records the spec in results.json
(`method`), so the report reads it back without importing the method.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from sadi.core.components import COMPONENTS


@dataclass(frozen=True)
class MethodSpec:
    """A steering method's metadata.

    Attributes:
        name: the method's name (`intervention.name` of its config, steerer.json `method`).
        strength: the parameter that sets how hard it steers (SADI's `strength`, CAA's
            `multiplier`, ...): the x axis of strength plots and behaviour curves.
        identity: the value of `strength` at which the method is the unsteered model, bit
            for bit (SADI 1: selected elements become 1 * A; the others 0).
        size: the parameter that sets how much of the model it edits (`k`), or None; with
            `strength`, it orders selection's tie-break (weakest, then smallest, first).
        axes: the parameters a sweep of the method plots, the strength last, e.g. ("k",
            "strength"): one line per value of the others.
        apply_params: the parameters that change how a fitted state is applied, not the
            state itself: a sweep over them shares one fit (and one engine pass).
        components: the components it steers.
        default_component: the component its config selects unless one is given.
    """

    name: str
    strength: str
    identity: float
    size: str | None = None
    axes: tuple[str, ...] = ()
    apply_params: tuple[str, ...] = ()
    components: tuple[str, ...] = COMPONENTS
    default_component: str = "head"

    def __post_init__(self) -> None:
        if self.default_component not in self.components:
            raise ValueError(
                f"{self.name}: default_component {self.default_component!r} is not one of its "
                f"components {list(self.components)}"
            )
        if self.axes and self.axes[-1] != self.strength:
            raise ValueError(f"{self.name}: axes {self.axes} must end with {self.strength!r}")
        unknown = set(self.components) - set(COMPONENTS)
        if unknown:
            raise ValueError(f"{self.name}: unknown components {sorted(unknown)}")

    @property
    def line(self) -> str | None:
        """The parameter drawn as one line per value in strength plots (the first axis that is
        not the strength), or None."""
        return next((a for a in self.axes if a != self.strength), None)

    def magnitude(self, params: dict[str, Any]) -> float:
        """How far `params` steer from the unsteered model: |strength - identity|."""
        return abs(float(params.get(self.strength, self.identity)) - self.identity)

    def tie_break(self, params: dict[str, Any]) -> tuple[float, float]:
        """Smaller is preferred among equally good points: the weakest intervention, then the
        fewest elements (`size`)."""
        size = float(params.get(self.size, 0)) if self.size else 0.0
        return (self.magnitude(params), size)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON data (results.json `method`)."""
        out = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MethodSpec:
        """The inverse of `as_dict`; unknown keys (from a newer sadi) are ignored."""
        names = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names
        }
        return cls(**kwargs)


__all__ = ["COMPONENTS", "MethodSpec"]
