"""Checks of a composed run config that need no model, run before anything is loaded.

Each raises `ConfigError` with one message that names the bad value, the allowed values and
the fix, so a bad override costs seconds, not a model load and a fit.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Sequence
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from sadi.core.models import resolve_dtype
from sadi.data.tasks import check_split_names
from sadi.eval import metrics
from sadi.infra.errors import UserError

# intervention config keys that are not constructor arguments of the steerer
_NOT_PARAMS = {"_target_", "name"}


class ConfigError(UserError):
    """A run config value that cannot work; the message says which and how to fix it."""


def judge_metric_names(cfg: Any) -> list[str]:
    """The metrics a judged run adds to each split (`sadi.pipeline.judging`); none without
    a judge."""
    judge = cfg.get("judge") or {}
    if judge.get("name", "none") == "none":
        return []
    from sadi.judge.rubrics import JUDGED_PREFIX, score_names

    return [JUDGED_PREFIX + n for n in score_names(str(judge.get("rubric")))]


def check_optimized_metric(
    value: str, primary_metric: str, extra: Sequence[str] = ()
) -> tuple[str, str]:
    """`optimized_metric` must be `select/<a metric the task reports>` (or one of `extra`,
    e.g. a judged score); returns (split, name)."""
    split, sep, name = str(value).partition("/")
    try:
        allowed = [*metrics.allowed(primary_metric), *extra]
    except ValueError as err:
        raise ConfigError(f"task.primary_metric={primary_metric!r}: {err}") from err
    if split != "select" or not sep:
        raise ConfigError(
            f"optimized_metric={value!r} must read the select split, e.g. "
            f"optimized_metric=select/{allowed[0]}: hyperparameters are chosen on select and "
            "the report split is only reported (python -m sadi.select does that once)"
        )
    if name not in allowed:
        raise ConfigError(
            f"optimized_metric={value!r}: this task reports {list(allowed)}, not {name!r}; use "
            f"optimized_metric=select/{allowed[0]}"
        )
    return split, name


def check_batch_size(value: Any) -> None:
    """A positive integer, "auto" or "auto:N" (lm-eval's forms)."""
    if isinstance(value, bool):
        ok = False
    elif isinstance(value, int):
        ok = value > 0
    elif isinstance(value, str):
        head, _, tail = value.partition(":")
        ok = head == "auto" and (not tail or (tail.isdigit() and int(tail) > 0))
        ok = ok or (value.isdigit() and int(value) > 0)
    else:
        ok = False
    if not ok:
        raise ConfigError(
            f"model.batch_size={value!r} is not a batch size; use a positive integer "
            "(e.g. model.batch_size=16), 'auto' or 'auto:N' (lm-eval picks the largest that fits)"
        )


def check_device(value: str | None) -> None:
    """A device this machine has (None: CUDA when present, else CPU)."""
    if value is None:
        return
    try:
        device = torch.device(value)
    except RuntimeError as err:
        raise ConfigError(
            f"model.device={value!r} is not a device ({err}); use cpu, cuda, cuda:N, or null "
            "(CUDA when present, else CPU)"
        ) from err
    if device.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ConfigError(
                f"model.device={value!r} but this machine has no CUDA device (torch "
                f"{torch.__version__}); use model.device=cpu, or model.device=null to take CUDA "
                "only where there is one"
            )
        if device.index is not None and device.index >= n:
            raise ConfigError(
                f"model.device={value!r} but this machine has {n} CUDA device(s): "
                f"use cuda:0 .. cuda:{n - 1}"
            )
    elif device.type not in ("cpu", "mps"):
        raise ConfigError(f"model.device={value!r}: use cpu, cuda, cuda:N or null")


def check_dtype(value: str) -> None:
    try:
        resolve_dtype(value)
    except ValueError as err:
        raise ConfigError(f"model.dtype: {err}") from err


def steerer_class(target: str) -> type[Any]:
    from hydra.utils import get_class

    cls: type[Any] = get_class(target)
    return cls


def check_intervention_keys(intervention: DictConfig) -> None:
    """Every key of the intervention config is an argument of its steerer's constructor."""
    target = intervention.get("_target_")
    if not target:
        extra = sorted(set(intervention) - _NOT_PARAMS)
        if extra:
            raise ConfigError(
                f"intervention=none takes no parameters, got {extra}; choose a method "
                "(intervention=sadi, iti, caa, ...) or drop those overrides"
            )
        return
    cls = steerer_class(str(target))
    params = [p for p in inspect.signature(cls).parameters if p != "self"]
    valid = sorted(set(params) - {"component", "progress"})
    for key in map(str, intervention):
        if key in _NOT_PARAMS or key in params:
            continue
        near = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
        hint = f" Did you mean {near}?" if near else ""
        raise ConfigError(
            f"intervention.{key} is not a parameter of {cls.__name__} "
            f"(intervention={intervention.get('name')}).{hint} Its parameters: {valid}"
        )


def check_required_values(intervention: DictConfig) -> None:
    """Every mandatory (`???`) intervention value is set, e.g. SAS's SAE directory."""
    # missing_keys names keys from the config root ("intervention.sae"): keep the last part
    missing = sorted(str(k).rsplit(".", 1)[-1] for k in OmegaConf.missing_keys(intervention))
    if missing:
        hints = {
            "sae": "an SAE directory in SAELens' format (cfg.json + sae_weights.safetensors), "
            "or 'trained' (sadi trains one offline for the model's layer, then caches it)"
        }
        raise ConfigError(
            f"intervention={intervention.get('name')} needs "
            + ", ".join(f"intervention.{k}=<{hints.get(k, 'value')}>" for k in missing)
        )


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def device_map_of(model: Any) -> str | dict[str, Any] | None:
    """`model.device_map`, checked: None, one of DEVICE_MAPS, or {module name: device}
    ("cuda:N", N, "cpu" or "disk"; "disk" needs model.offload_folder); model.device stays
    null beside it."""
    value = model.get("device_map")
    if value is None:
        return None
    if model.get("device") is not None:
        raise ConfigError(
            f"model.device={model.device!r} with model.device_map: a device_map places every "
            "module itself; set model.device=null"
        )
    if isinstance(value, str):
        if value not in DEVICE_MAPS:
            raise ConfigError(
                f"model.device_map={value!r}: use one of {list(DEVICE_MAPS)} or a map of module "
                "names to devices, e.g. '{model.layers.0: cuda:0, lm_head: cpu}'"
            )
        return value
    mapping = OmegaConf.to_container(value) if isinstance(value, DictConfig) else value
    if not isinstance(mapping, dict) or not mapping:
        raise ConfigError(f"model.device_map={value!r}: give a name or a non-empty map")
    for name, device in mapping.items():
        if not (
            isinstance(device, int) or device in ("cpu", "disk") or str(device).startswith("cuda")
        ):
            raise ConfigError(f"model.device_map[{name!r}]={device!r}: use cuda:N, N, cpu or disk")
    if "disk" in mapping.values() and not model.get("offload_folder"):
        raise ConfigError(
            "model.device_map puts modules on disk: set model.offload_folder=<a directory>"
        )
    return {str(k): v for k, v in mapping.items()}


def check_run_config(cfg: DictConfig) -> None:
    """Everything about `cfg` that can be checked before the task or the model is loaded."""
    check_required_values(cfg.intervention)
    check_optimized_metric(cfg.optimized_metric, cfg.task.primary_metric, judge_metric_names(cfg))
    check_batch_size(cfg.model.batch_size)
    check_device(cfg.model.device)
    device_map_of(cfg.model)
    check_dtype(cfg.model.dtype)
    check_intervention_keys(cfg.intervention)
    try:
        check_split_names(list(cfg.task.splits))
    except ValueError as err:
        raise ConfigError(str(err)) from err
    if cfg.model.batch_tokens <= 0 or (
        cfg.model.max_length is not None and cfg.model.max_length <= 0
    ):
        raise ConfigError(
            f"model.batch_tokens={cfg.model.batch_tokens} and model.max_length="
            f"{cfg.model.max_length} must be positive numbers of tokens (max_length may be "
            "null: the model's context)"
        )
    if cfg.task.limit is not None and cfg.task.limit <= 0:
        raise ConfigError(
            f"task.limit={cfg.task.limit} must be a positive number of items per scored split, "
            "or null for all"
        )
    if cfg.task.n_pairs <= 0 and cfg.intervention.get("_target_"):
        raise ConfigError(f"task.n_pairs={cfg.task.n_pairs} must be positive (e.g. 150)")


__all__ = [
    "ConfigError",
    "check_batch_size",
    "check_device",
    "device_map_of",
    "check_dtype",
    "check_intervention_keys",
    "check_optimized_metric",
    "check_run_config",
]
