"""Steering methods: one module and one class each, found by the registry (no list to edit).

`from sadi.steerers import SADI` (any registered method, by class name) and the contract's
names (`Steerer`, `SteeringHandle`, `MethodSpec`, the errors) resolve on first use, so that
`sadi.steerers.spec` stays importable without torch. Modules: `spec` (what a method
declares), `registry`, `base` (the contract), `session` (hook lifetime), `artifacts` (files),
`identity` (the fitted model's checks), one module per method.
"""

from __future__ import annotations

import importlib
from typing import Any

_CONTRACT = {
    "Steerer": "sadi.steerers.base",
    "SteeringHandle": "sadi.steerers.session",
    "EditFn": "sadi.steerers.session",
    "MethodSpec": "sadi.steerers.spec",
    "ArtifactError": "sadi.steerers.artifacts",
    "FingerprintMismatch": "sadi.steerers.identity",
    "WeightsMismatch": "sadi.steerers.identity",
}


def __getattr__(name: str) -> Any:
    if name in _CONTRACT:
        return getattr(importlib.import_module(_CONTRACT[name]), name)
    if name == "STEERERS":  # every registered method by name
        from sadi.steerers.registry import methods

        return methods()
    if name[:1].isupper():  # a class (lower-case names are submodules: import them)
        from sadi.steerers.registry import by_class_name

        found = by_class_name(name)
        if found is not None:
            return found
        for cls in importlib.import_module("sadi.steerers.registry").methods().values():
            module = importlib.import_module(cls.__module__)
            if name in getattr(module, "__all__", ()):  # e.g. SADIState beside SADI
                return getattr(module, name)
    raise AttributeError(f"module 'sadi.steerers' has no attribute {name!r}")
