"""Which model a run scores and generates with: `model.backend=hf` (`SteeredLM`, hooks on
the HF model) or `model.backend=vllm` (`sadi.vllm`: one engine per process, each steerer
installed once under its digest and checked against the HF model by the start-up
self-test before it scores anything)."""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from sadi.core.fingerprints import weights_fingerprint
from sadi.core.models import model_path
from sadi.pipeline.validate import ConfigError
from sadi.steerers.base import Steerer

log = logging.getLogger(__name__)

BACKENDS = ("hf", "vllm")
# (model files, dtype, settings, weights) -> the process's vLLM lm-eval model
_ENGINES: dict[tuple[Any, ...], Any] = {}


def backend_of(cfg: DictConfig) -> str:
    """`model.backend`, checked."""
    backend = str(cfg.model.get("backend", "hf"))
    if backend not in BACKENDS:
        raise ConfigError(f"model.backend={backend!r}: choose one of {list(BACKENDS)}")
    return backend


def vllm_settings(cfg: DictConfig) -> Any:
    """The run's `VLLMSettings` (`model.vllm`), checked."""
    from sadi.vllm.engine import settings_of

    return settings_of(OmegaConf.to_container(cfg.model.vllm) if cfg.model.get("vllm") else None)


def cache_fields(cfg: DictConfig) -> dict[str, Any]:
    """What a cache of scores or generations adds to its key for the run's backend: nothing
    for hf; for vllm the engine (its numbers agree with HF's only within the self-test's
    tolerance), the context it truncates to, and the sharding (reduction order)."""
    backend = backend_of(cfg)
    if backend == "hf":
        return {}
    settings = vllm_settings(cfg)
    return {
        "backend": backend,
        "max_model_len": settings.max_model_len,
        "tensor_parallel_size": settings.tensor_parallel_size,
    }


def check_backend(cfg: DictConfig, steerer: Steerer[Any] | None) -> None:
    """Refuse, before the model loads, what the chosen backend cannot run."""
    if backend_of(cfg) != "vllm":
        return
    from sadi.vllm.engine import vllm_version
    from sadi.vllm.sites import refusal

    vllm_settings(cfg)
    if cfg.sweep.engine is True:
        raise ConfigError(
            "sweep.engine=true with model.backend=vllm: the sweep engine runs HF forwards; "
            "vLLM shares prefixes itself (sweep.engine=auto or false)"
        )
    why = None if steerer is None else refusal(steerer)
    if steerer is not None and why is not None:
        raise ConfigError(f"model.backend=vllm cannot run intervention={steerer.method}: {why}")
    vllm_version()  # installed at all (says how to get it)


def vllm_lm(
    cfg: DictConfig,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    steerer: Steerer[Any] | None,
) -> Any:
    """The vLLM lm-eval model of this run's model under `steerer` (None: unsteered)."""
    from sadi.vllm.lm import SteeredVLLMLM

    settings = vllm_settings(cfg)
    path = model_path(cfg.model.source)
    fingerprint = weights_fingerprint(model)
    key = (path, cfg.model.dtype, settings, fingerprint)
    if key not in _ENGINES:
        _ENGINES.clear()  # one engine at a time: it holds its KV cache memory
        lm = SteeredVLLMLM(
            path,
            fingerprint,
            dtype=cfg.model.dtype,
            settings=settings,
            progress=cfg.progress,
            max_gen_toks=cfg.task.max_gen_toks,
        )
        lm.engine.self_test(None, None, model, tokenizer)
        _ENGINES[key] = lm
    lm = _ENGINES[key]
    if steerer is None:
        return lm.with_steerer(None)
    known = set(lm.engine.salts)
    name = lm.engine.install(None, steerer)
    if name not in known:  # newly installed: checked against the HF backend once
        lm.engine.self_test(name, steerer, model, tokenizer)
    return lm.with_steerer(name)


__all__ = ["BACKENDS", "backend_of", "cache_fields", "check_backend", "vllm_lm"]
