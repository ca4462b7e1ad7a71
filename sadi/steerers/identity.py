"""The model a steerer was fitted on, and the checks that refuse any other model.

A fitted steerer records the shape of its model (architecture and sizes), the fingerprint of
its weights (every weight: `sadi.core.fingerprints`), the model's id and the number of pairs;
`accepted` adds fingerprints of other weights the user vouched for
(`Steerer.load(..., allow_other_weights=True)`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from sadi.core.architectures import ModelShape, model_shape, weights_fingerprint
from sadi.core.models import model_id
from sadi.infra.errors import UserError


class FingerprintMismatch(UserError):
    """A fitted steerer was applied to, or loaded for, a model of a different shape."""


class WeightsMismatch(FingerprintMismatch):
    """A fitted steerer was applied to, or loaded for, a model of its shape but other weights
    (e.g. the chat variant of the base model it was fitted on)."""


@dataclass(frozen=True)
class ModelRecord:
    """What a fitted steerer knows of its model."""

    shape: ModelShape
    weights: str  # `weights_fingerprint` of the model it was fitted on
    model_id: str | None = None
    n_pairs: int = 0
    accepted: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(cls, model: nn.Module, n_pairs: int) -> ModelRecord:
        return cls(model_shape(model), weights_fingerprint(model), model_id(model), n_pairs)

    def check(self, model: nn.Module, method: str) -> None:
        """Refuse a model whose architecture, sizes or weights differ from the fitted one.

        Raises:
            FingerprintMismatch: the architecture or a size differs.
            WeightsMismatch: same shape, other weights, and those were not accepted.
        """
        self.check_shape(model, method)
        given = weights_fingerprint(model)
        if given != self.weights and given not in self.accepted:
            also = f", also accepting {sorted(self.accepted)}" if self.accepted else ""
            raise WeightsMismatch(
                f"this {method} steerer was fitted on {self.model_id!r} (weights fingerprint "
                f"{self.weights}{also}), but the given model {model_id(model)!r} has the same "
                f"shape and other weights (fingerprint {given}), e.g. a fine-tuned or chat "
                "variant; refit it on this model, or, if you know the weights are equivalent, "
                "load it with Steerer.load(directory, model, allow_other_weights=True)"
            )

    def check_shape(self, model: nn.Module, method: str) -> None:
        actual = model_shape(model)
        if actual != self.shape:
            mine, theirs = self.shape.as_dict(), actual.as_dict()
            diff = {k: (v, theirs[k]) for k, v in mine.items() if theirs[k] != v}
            raise FingerprintMismatch(
                f"this {method} steerer was fitted on {self.model_id!r} and does not fit this "
                f"model: (fitted, given) = {diff}; refit it on this model"
            )

    def accepting(self, model: nn.Module, method: str) -> ModelRecord:
        """A record that also accepts `model`'s weights (its shape must still match)."""
        self.check_shape(model, method)
        given = weights_fingerprint(model)
        if given == self.weights:
            return self
        return replace(self, accepted=self.accepted | {given})

    def as_metadata(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "fingerprint": self.shape.as_dict(),
            "weights_fingerprint": self.weights,
            "accepted_weights": sorted(self.accepted),
            "n_pairs": self.n_pairs,
        }


__all__ = ["FingerprintMismatch", "ModelRecord", "WeightsMismatch", "model_id"]
