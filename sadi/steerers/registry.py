"""Every steering method, found without a list: a `Steerer` subclass that sets `spec`
registers itself when its class is created. The modules of this package are imported on the
first lookup; a method defined elsewhere registers when its module is imported (its config's
`_target_` does that). A saved steerer records its class's import path, but loading one never
imports code outside `sadi` by itself: an artifact is data, and must not choose what runs."""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sadi.steerers.base import Steerer

_METHODS: dict[str, type[Steerer[Any]]] = {}
_BUILTIN_LOADED: list[bool] = []


def register(cls: type[Steerer[Any]]) -> None:
    """Record `cls` under `cls.spec.name` (called by `Steerer.__init_subclass__`)."""
    name = cls.spec.name
    known = _METHODS.get(name)
    if known is not None and class_path(known) != class_path(cls):
        raise ValueError(
            f"two steering methods are named {name!r}: {class_path(known)} and "
            f"{class_path(cls)}; give one another spec.name"
        )
    _METHODS[name] = cls


def class_path(cls: type) -> str:
    """`module.Class`: what a config's `_target_` and a saved steerer name."""
    return f"{cls.__module__}.{cls.__qualname__}"


def _import_builtin() -> None:
    if _BUILTIN_LOADED:
        return
    import sadi.steerers as package

    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")
    _BUILTIN_LOADED.append(True)


def methods() -> dict[str, type[Steerer[Any]]]:
    """Every registered method by name (the built-in ones and any imported since)."""
    _import_builtin()
    return dict(_METHODS)


def method(name: str, path: str | None = None) -> type[Steerer[Any]]:
    """The method called `name`. `path` (`module.Class`, as a saved steerer records it)
    names where an unregistered method lives: inside `sadi` it is imported; elsewhere the
    error asks to import it first (loading an artifact never imports outside code)."""
    if name not in _METHODS:
        _import_builtin()
    if name not in _METHODS and path:
        module, _, _cls = path.rpartition(".")
        if module != "sadi" and not module.startswith("sadi."):
            raise ValueError(
                f"steering method {name!r} is defined in {module!r}, which is not imported; "
                f"import it first (e.g. `import {module}`): loading a saved steerer never "
                "imports code outside sadi by itself"
            )
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ValueError(f"steering method {name!r}: cannot import {path} ({err})") from err
    if name not in _METHODS:
        near = difflib.get_close_matches(name, list(_METHODS), n=3)
        raise ValueError(
            f"unknown steering method {name!r}; known: {sorted(_METHODS)}"
            + (f" (did you mean {near}?)" if near else "")
        )
    return _METHODS[name]


def by_class_name(name: str) -> type[Steerer[Any]] | None:
    """The registered method whose class is called `name` (e.g. "SADI"), or None."""
    _import_builtin()
    return next((c for c in _METHODS.values() if c.__name__ == name), None)


__all__ = ["by_class_name", "class_path", "method", "methods", "register"]
