"""A saved steerer's files: writing them (`save`), reading and checking them (`load`):
steerer.json (method, class, hyperparameters, the model record, versions) and
steerer.safetensors (the fitted state; never pickled). Every failure to read is an
`ArtifactError` naming the file and what is wrong with it."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from sadi.core.architectures import WEIGHTS_FINGERPRINT_CHARS, ModelShape
from sadi.infra.errors import UserError
from sadi.infra.jsonio import write_json
from sadi.steerers import registry
from sadi.steerers.identity import ModelRecord

if TYPE_CHECKING:
    from sadi.steerers.base import Steerer

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


def read_metadata(meta_path: Path) -> dict[str, Any]:
    """steerer.json as a dict holding a `method` and both fingerprint fields."""

    def fail(what: str) -> ArtifactError:
        return ArtifactError(f"{meta_path}: {what}")

    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise fail(f"invalid JSON ({err}); re-save the steerer or refit it") from err
    if not isinstance(meta, dict):
        raise fail(f"expected a JSON object, got {type(meta).__name__}")
    if not isinstance(meta.get("method"), str):
        raise fail(f"no 'method' field; it must name one of {sorted(registry.methods())}")
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


def metadata(steerer: Steerer[Any]) -> dict[str, Any]:
    """steerer.json's content: method, class, component, parameters, model record, extras,
    versions."""
    import platform

    import transformers

    import sadi

    return {
        "method": steerer.method,
        "class": registry.class_path(type(steerer)),
        "component": steerer.component,
        **steerer.params(),
        **steerer.fitted_record().as_metadata(),
        **steerer.extra_metadata(),
        "versions": {
            "sadi": sadi.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
    }


def save(steerer: Steerer[Any], out: Path) -> Path:
    """Write `steerer.safetensors` and `steerer.json` (and a method's readable extras) into
    `out`; returns it."""
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in steerer.tensors().items()}
    save_file(tensors, str(out / TENSORS_FILE))
    write_json(out / META_FILE, metadata(steerer))  # atomic: never a half-written file
    steerer.write_extras(out)
    return out


def load(
    cls: type[Steerer[Any]], src: Path, model: nn.Module | None, allow_other_weights: bool
) -> Steerer[Any]:
    """The steerer saved in `src`, checked against `model` when given (see `Steerer.load`);
    called on a method's class, the saved method must be that one."""
    meta_path = src / META_FILE
    if not meta_path.exists():
        raise FileNotFoundError(
            f"no {META_FILE} in {src}; pass the directory written by Steerer.save()"
        )
    obj = _from_metadata(cls, meta_path)
    tensors = read_tensors(src)
    try:
        obj._load_tensors(tensors)
    except ValueError as err:
        raise ArtifactError(f"{src / TENSORS_FILE}: {err}") from err
    if model is not None:
        if allow_other_weights:
            obj.accept_weights(model)
        obj.check_fingerprint(model)
    return obj


def saved_dir(path: str | Path) -> Path | None:
    """The directory holding a saved steerer, given it or a run directory (whose steerer is
    in `steerer/`); None when neither holds one."""
    path = Path(path)
    for candidate in (path / "steerer", path):
        if (candidate / META_FILE).exists():
            return candidate
    return None


def _from_metadata(cls: type[Steerer[Any]], meta_path: Path) -> Steerer[Any]:
    """A steerer with hyperparameters and model record from `meta_path`, no state yet."""

    def fail(what: str) -> ArtifactError:
        return ArtifactError(f"{meta_path}: {what}")

    meta = read_metadata(meta_path)
    method = meta["method"]
    try:
        klass = registry.method(method, meta.get("class"))
    except ValueError as err:
        raise fail(str(err)) from err
    if getattr(cls, "spec", None) is not None and klass is not cls:
        raise fail(
            f"holds a {method!r} steerer, not {cls.method!r}; load it with "
            f"Steerer.load or {klass.__name__}.load"
        )
    names = [n for n in klass.param_names() if n not in ("batch_size", "progress")]
    try:
        obj = klass(**{k: meta[k] for k in names if k in meta})
    except (ValueError, TypeError) as err:
        raise fail(str(err)) from err
    missing = [k for k in ("component", *obj.params()) if k not in meta]
    if missing:
        raise fail(
            f"no value for the hyperparameters {missing} (a {method} steerer records "
            f"{['component', *obj.params()]}); re-save the fitted steerer with this "
            "version, or refit it"
        )
    obj.record = _record(meta, fail)
    try:
        obj._read_extra_metadata(meta)
    except ValueError as err:
        raise fail(str(err)) from err
    return obj


def _record(meta: dict[str, Any], fail: Callable[[str], ArtifactError]) -> ModelRecord:
    try:
        shape = ModelShape.from_dict(meta["fingerprint"])
    except ValueError as err:
        raise fail(f"bad 'fingerprint': {err}") from err
    weights = check_weights_value("weights_fingerprint", meta["weights_fingerprint"], fail)
    accepted = meta.get("accepted_weights", [])
    if not isinstance(accepted, list):
        raise fail(f"'accepted_weights' must be a list of fingerprints, got {accepted!r}")
    n_pairs = meta.get("n_pairs", 0)
    if isinstance(n_pairs, bool) or not isinstance(n_pairs, int) or n_pairs < 0:
        raise fail(f"'n_pairs' must be a non-negative integer, got {n_pairs!r}")
    return ModelRecord(
        shape=shape,
        weights=weights,
        model_id=meta.get("model_id"),
        n_pairs=n_pairs,
        accepted=frozenset(check_weights_value("accepted_weights", a, fail) for a in accepted),
    )


__all__ = [
    "saved_dir",
    "ArtifactError",
    "META_FILE",
    "TENSORS_FILE",
    "check_finite_tensor",
    "check_mask",
    "check_tensor_names",
    "check_tensor_shape",
    "check_weights_value",
    "load",
    "metadata",
    "read_metadata",
    "read_tensors",
    "save",
]
