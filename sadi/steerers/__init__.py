"""Steering methods: one module and one class each, registered by method name."""

from sadi.steerers.austeer import AUSteer, AUSteerState
from sadi.steerers.base import (
    ArtifactError,
    FingerprintMismatch,
    Steerer,
    SteeringHandle,
    WeightsMismatch,
)
from sadi.steerers.caa import CAA, CAAState
from sadi.steerers.iti import ITI, ITIState
from sadi.steerers.sadi import SADI, SADIState
from sadi.steerers.sas import SAS, SASState

STEERERS: dict[str, type[Steerer]] = {cls.method: cls for cls in (SADI, ITI, CAA, AUSteer, SAS)}

__all__ = [
    "ArtifactError",
    "AUSteer",
    "AUSteerState",
    "CAA",
    "CAAState",
    "ITI",
    "ITIState",
    "SADI",
    "SADIState",
    "SAS",
    "SASState",
    "STEERERS",
    "FingerprintMismatch",
    "Steerer",
    "SteeringHandle",
    "WeightsMismatch",
]
