"""Content fingerprints that cover everything: a model's weights in memory, weight files on
disk, a task's data. Every cache key and every artifact check is built from these.

- `weights_fingerprint(model)`: sha256 over every parameter and persistent buffer of a
  loaded model, each as float32 on the CPU. Computed once per model and remembered while
  no tensor of it is replaced or edited in place (each tensor's version counter is part of
  the memo), so calling it on every `Steerer.apply` costs a dictionary lookup.
- `stand_in(proxy, fingerprint)`: a shape proxy (a meta-device model standing for weights
  held elsewhere, e.g. inside a vLLM worker) answers with the fingerprint of the weights it
  stands for.
- `file_digest(path)`: the sha256 of a whole file, remembered in an index keyed by the
  file's resolved path, size and modification time (`<cache>/file_digests.json`), so a
  7B checkpoint is read once, and again only when one of its files changes.
- `directory_fingerprint(dir)`: every weight file's digest plus `config.json`.
"""

from __future__ import annotations

import hashlib
import json
import time
import weakref
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sadi.infra.files import locked, write_text_atomic

WEIGHTS_FINGERPRINT_CHARS = 16
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")
DIGEST_INDEX = "file_digests.json"
# a file modified this recently is not remembered: two writes within one tick of the file
# system's clock can leave size and mtime equal (git's "racy" rule)
RACY_NS = 2 * 10**9
_CHUNK = 1 << 24  # elements hashed per step: bounds the float32 copy of a large tensor
_SAMPLE = 16  # elements of each tensor whose values the memo's stamp holds

# model -> (stamp of its tensors when hashed, fingerprint)
_MEMO: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[Any, ...], str]] = (
    weakref.WeakKeyDictionary()
)

# shape proxies (meta-device models) -> the fingerprint of the weights they stand for
_STAND_INS: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


def stand_in(proxy: nn.Module, fingerprint: str) -> nn.Module:
    """Let `proxy`, a model whose weights are on the meta device, answer
    `weights_fingerprint` with `fingerprint`, the weights it stands for (those a serving
    engine holds, checked there by its own start-up self-test); returns `proxy`."""
    _STAND_INS[proxy] = fingerprint
    return proxy


def _named_tensors(model: nn.Module) -> list[tuple[str, Tensor]]:
    """Every parameter and persistent buffer, by its state-dict name (tied weights once per
    name, so a tied and an untied model with equal values hash alike)."""
    return list(model.state_dict(keep_vars=True).items())


def _offload_owner(model: nn.Module, name: str) -> nn.Module | None:
    """The module holding tensor `name` where accelerate offloads it (a `device_map` with
    "cpu" or "disk" entries: the weight is on the meta device between forwards and loaded
    onto the execution device by the module's hook), else None."""
    from accelerate.utils import has_offloaded_params

    path, _, _ = name.rpartition(".")
    try:
        module = model.get_submodule(path)
    except AttributeError:
        return None
    return module if has_offloaded_params(module) else None


def _materialised(tensors: list[tuple[str, Tensor]], owners: dict[str, nn.Module]) -> Any:
    """(name, tensor) of `tensors` with each offloaded one read through its module in
    `owners` from where accelerate keeps it (CPU memory or the offload folder), one module
    at a time."""
    from accelerate.utils import align_module_device

    for name, tensor in tensors:
        if not tensor.is_meta:
            yield name, tensor
            continue
        owner = owners[name]
        with align_module_device(owner, torch.device("cpu")):
            yield name, getattr(owner, name.rpartition(".")[2]).detach().clone()


def _stamp(tensors: list[tuple[str, Tensor]]) -> tuple[Any, ...] | None:
    """What changes when a tensor is replaced or edited in place: its storage and version
    counter, and the values of _SAMPLE evenly spaced elements of it (an edit through `.data`,
    as PEFT's LoRA merge does, bumps no version counter but moves a dense delta's sampled
    values); None where this torch does not expose version counters (nothing is remembered)."""
    stamp: list[Any] = []
    samples = []
    for name, t in tensors:
        version = getattr(t, "_version", None)
        if not isinstance(version, int):
            return None
        stamp.append((name, t.data_ptr(), version, t.dtype, str(t.device), tuple(t.shape)))
        if t.is_meta:  # offloaded (accelerate): changed only by reloading the model
            continue
        flat = t.detach().reshape(-1)
        samples.append(flat[:: max(1, flat.numel() // _SAMPLE)].to("cpu", torch.float32))
    stamp.append(torch.cat(samples).numpy().tobytes() if samples else b"")
    return tuple(stamp)


def weights_fingerprint(model: nn.Module) -> str:
    """A short hash of every weight of `model`: tells apart models that differ anywhere.

    Hashes (sha256, first 16 hex characters) the name, shape and float32 value of every
    parameter and persistent buffer, on the CPU in chunks (a GPU model is copied chunk by
    chunk). Equal weights give equal fingerprints in any dtype they are held in exactly (a
    bf16 checkpoint loaded in bf16 or float32); a lossy cast gives another fingerprint.
    The result is remembered per model until one of its tensors changes (in-place edits
    bump a tensor's version counter; an edit through `.data` does not, and is seen when it
    moves one of the 16 sampled values of a tensor, as a dense delta such as a merged LoRA
    does: after a sparse edit through `.data`, pass a fresh model).

    An offloaded weight (a `device_map` with "cpu" or "disk" entries: on the meta device
    between forwards) is read from where accelerate keeps it, one module at a time.

    Raises:
        ValueError: a weight is on the meta device and nothing offloads it.

    Example:
        >>> weights_fingerprint(model)
        '3f9c0a1b2d4e5f60'
    """
    if model in _STAND_INS:
        return _STAND_INS[model]
    tensors = _named_tensors(model)
    owners: dict[str, nn.Module] = {}
    for name, tensor in tensors:
        if not tensor.is_meta:
            continue
        owner = _offload_owner(model, name)
        if owner is None:
            raise ValueError(
                f"cannot fingerprint the weights of {type(model).__name__}: {name} is on the "
                "meta device and no device_map offloads it (not loaded); load the model "
                "with its weights in memory"
            )
        owners[name] = owner
    stamp = _stamp(tensors)
    memo = _MEMO.get(model)
    if stamp is not None and memo is not None and memo[0] == stamp:
        return memo[1]
    digest = hashlib.sha256()
    for name, tensor in _materialised(tensors, owners):
        digest.update(f"{name}:{tuple(tensor.shape)}\n".encode())
        flat = tensor.detach().reshape(-1)
        for start in range(0, flat.numel(), _CHUNK):
            part = flat[start : start + _CHUNK].to(device="cpu", dtype=torch.float32)
            digest.update(part.contiguous().numpy().tobytes())
    fingerprint = digest.hexdigest()[:WEIGHTS_FINGERPRINT_CHARS]
    if stamp is not None:
        _MEMO[model] = (stamp, fingerprint)
    return fingerprint


# ----- files on disk ------------------------------------------------------------------------
def _short(h: Any) -> str:
    return str(h.hexdigest())[:24]


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def file_digest(path: Path, index_dir: Path | None = None) -> str:
    """The sha256 of the whole file, taken from `index_dir/file_digests.json` while the
    file's resolved path, size and modification time are those it was computed for (a file
    modified in the last `RACY_NS` is read every time).

    Args:
        path: the file.
        index_dir: where the index lives (None: nothing remembered, always read the file).
    """
    real = path.resolve()
    stat = real.stat()
    key, mark = str(real), [stat.st_size, stat.st_mtime_ns]
    if index_dir is None:
        return _sha256_file(real)
    index_file = index_dir / DIGEST_INDEX
    index = _read_index(index_file)
    hit = index.get(key)
    if isinstance(hit, list) and len(hit) == 3 and hit[:2] == mark:
        return str(hit[2])
    value = _sha256_file(real)
    after = real.stat()
    if [after.st_size, after.st_mtime_ns] != mark or time.time_ns() - mark[1] < RACY_NS:
        return value  # written while read, or too recently to trust its mtime: no entry
    with locked(index_dir / f"{DIGEST_INDEX}.lock"):
        index = _read_index(index_file)
        index[key] = [*mark, value]
        write_text_atomic(index_file, json.dumps(index, indent=0, sort_keys=True))
    return value


def _read_index(path: Path) -> dict[str, Any]:
    """The digest index; a damaged one is an empty index (it is only a memo)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def directory_fingerprint(directory: Path, index_dir: Path | None = None) -> str:
    """Fingerprint of a model directory: the full digest of every weight file below it and
    `config.json`; a change to any byte of any of them changes it."""
    files = sorted(
        p for p in directory.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)
    )
    if not files:
        raise FileNotFoundError(
            f"no weight files ({', '.join(WEIGHT_SUFFIXES)}) under {directory}; "
            "model.source must be a model directory, an embedded:<name> or a hub id"
        )
    h = hashlib.sha256()
    config = directory / "config.json"
    if config.exists():
        h.update(config.read_bytes())
    for p in files:
        h.update(f"{p.relative_to(directory)}:{file_digest(p, index_dir)}\n".encode())
    return _short(h)


__all__ = [
    "DIGEST_INDEX",
    "WEIGHTS_FINGERPRINT_CHARS",
    "directory_fingerprint",
    "file_digest",
    "weights_fingerprint",
]
