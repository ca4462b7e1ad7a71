"""Reading and checking a saved steerer's files: steerer.json fields, steerer.safetensors
tensors. Every failure is an `ArtifactError` naming the file and what is wrong with it."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from sadi.core.architectures import WEIGHTS_FINGERPRINT_CHARS
from sadi.infra.errors import UserError

TENSORS_FILE = "steerer.safetensors"
META_FILE = "steerer.json"


class ArtifactError(UserError):
    """A saved steerer's files are damaged, inconsistent, or from another version of sadi."""


def check_tensor_names(method: str, tensors: dict[str, Tensor], expected: Sequence[str]) -> None:
    """Refuse a tensor set that is not exactly `expected` (names both sets)."""
    if set(tensors) != set(expected):
        raise ValueError(
            f"a {method} steerer holds the tensors {sorted(expected)}, found {sorted(tensors)}; "
            f"the file was not written by {method}'s save() (or was edited): re-save or refit it"
        )


def check_tensor_shape(name: str, tensor: Tensor, expected: Sequence[int], what: str) -> None:
    """Refuse `tensor` unless its shape is `expected`; `what` says where `expected` is from."""
    if tuple(tensor.shape) != tuple(expected):
        raise ValueError(
            f"tensor {name!r} has shape {list(tensor.shape)}, expected {list(expected)} "
            f"= {what}; the tensors and the fingerprint do not belong together: re-save the "
            "fitted steerer, or refit it"
        )


def check_mask(name: str, mask: Tensor) -> Tensor:
    """`mask` as bool, refusing values other than 0/1 (or False/True)."""
    if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(
            f"tensor {name!r} must be a 0/1 (bool) mask, got values {mask.unique().tolist()[:8]}"
        )
    return mask.bool()


def check_finite_tensor(name: str, tensor: Tensor) -> Tensor:
    """`tensor` as float32, refusing non-float dtypes and NaN/inf values."""
    if not tensor.is_floating_point():
        raise ValueError(f"tensor {name!r} must be floating point, got {tensor.dtype}")
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"tensor {name!r} holds NaN or infinite values")
    return tensor.float()


_FINGERPRINT_RE = re.compile(f"[0-9a-f]{{{WEIGHTS_FINGERPRINT_CHARS}}}")


def check_weights_value(field: str, value: object, fail: Callable[[str], ArtifactError]) -> str:
    if not isinstance(value, str) or not _FINGERPRINT_RE.fullmatch(value):
        raise fail(
            f"{field!r} must be {WEIGHTS_FINGERPRINT_CHARS} lowercase hex characters "
            f"(sadi.core.architectures.weights_fingerprint), got {value!r}; re-save or refit"
        )
    return value


def read_metadata(meta_path: Path, known: Sequence[str]) -> dict[str, Any]:
    """steerer.json as a dict holding a known `method` and both fingerprint fields."""

    def fail(what: str) -> ArtifactError:
        return ArtifactError(f"{meta_path}: {what}")

    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise fail(f"invalid JSON ({err}); re-save the steerer or refit it") from err
    if not isinstance(meta, dict):
        raise fail(f"expected a JSON object, got {type(meta).__name__}")
    if "method" not in meta:
        raise fail(f"no 'method' field; it must name one of {sorted(known)}")
    method = meta["method"]
    if not isinstance(method, str) or method not in known:
        raise fail(f"unknown steering method {method!r}; known: {sorted(known)}")
    for field in ("fingerprint", "weights_fingerprint"):
        if field not in meta:
            raise fail(
                f"no {field!r} field: it was written by an older version of sadi or edited "
                "by hand; re-save the fitted steerer with this version, or refit it"
            )
    return meta


def read_tensors(directory: Path) -> dict[str, Tensor]:
    """The tensors of steerer.safetensors in `directory` (never unpickled)."""
    path = directory / TENSORS_FILE
    if not path.exists():
        raise ArtifactError(
            f"{path}: file missing (the directory holds "
            f"{sorted(p.name for p in directory.iterdir())}); {META_FILE} alone has no fitted "
            "state: copy both files written by Steerer.save(), or refit"
        )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ArtifactError(
            f"{path}: not a readable safetensors file ({err}); it is truncated or "
            "damaged: copy it again from where it was saved, or refit"
        ) from err


__all__ = [
    "ArtifactError",
    "META_FILE",
    "TENSORS_FILE",
    "check_finite_tensor",
    "check_mask",
    "check_tensor_names",
    "check_tensor_shape",
    "check_weights_value",
    "read_metadata",
    "read_tensors",
]
