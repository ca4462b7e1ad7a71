"""Steering methods: one module and one class each, registered by method name."""

from sadi.steerers.base import FingerprintMismatch, Steerer, SteeringHandle
from sadi.steerers.sadi import SADI

STEERERS: dict[str, type[Steerer]] = {SADI.method: SADI}

__all__ = ["SADI", "STEERERS", "FingerprintMismatch", "Steerer", "SteeringHandle"]
