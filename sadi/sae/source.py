"""Where a steerer's SAE comes from: a directory in SAELens' format, or "trained", the default
TopK SAE that sadi trains offline for a model's layer (cached); and the checks that the SAE
fits the model (width, layer, the weights it was trained on)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from torch import nn
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from sadi.core.architectures import decoder_layers, model_shape, weights_fingerprint
from sadi.infra import checks
from sadi.infra.cache import digest
from sadi.sae.model import CFG_FILE, WEIGHTS_FILE, SparseAutoencoder, load_sae, parse_cfg

# sae="trained": the TopK SAE `python -m sadi.sae train` makes, with its defaults
TRAINED = "trained"


def check_directory(directory: Path) -> None:
    """`directory` holds a readable SAELens config and its weights file (the weights are
    read when the SAE loads); raises ValueError naming what is missing."""
    for name in (CFG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise ValueError(
                f"sae={str(directory)!r}: no {name} there; pass a directory in SAELens' "
                f"format ({CFG_FILE} + {WEIGHTS_FILE}, e.g. one written by `python -m "
                "sadi.sae train`), or sae=trained"
            )
    cfg_path = directory / CFG_FILE
    try:
        parse_cfg(json.loads(cfg_path.read_text(encoding="utf-8")), str(cfg_path))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{cfg_path}: not valid JSON ({err})") from err


def load(source: str | None) -> SparseAutoencoder:
    """The SAE in directory `source`; a clear error for none, and for "trained" (made by
    the steerer's fit, not loadable by name)."""
    if source is None:
        raise ValueError(
            "SAS needs an SAE: pass sae=<directory in SAELens' format> (e.g. "
            "intervention.sae=/path/to/sae, one written by `python -m sadi.sae train`)"
            ", sae=trained (sadi trains one offline for this model) or a loaded "
            "sadi.sae.SparseAutoencoder"
        )
    if source == TRAINED:
        raise RuntimeError("sae=trained: the SAE is trained by fit(); call fit() first")
    return load_sae(source)


def check_overrides(overrides: dict[str, Any], source: str | None) -> dict[str, Any]:
    """`sae_train` as plain JSON values: TrainConfig fields, for sae="trained" only."""
    from sadi.sae.train import TrainConfig

    values: dict[str, Any] = json.loads(json.dumps(dict(overrides or {}), default=list))
    if values:
        known = {f.name for f in dataclasses.fields(TrainConfig)} - {"layer"}
        unknown = sorted(set(values) - known)
        if unknown or source != TRAINED:
            raise ValueError(
                f"sae_train={values} applies to sae='trained' and takes TrainConfig fields "
                f"{sorted(known)}" + (f"; unknown: {unknown}" if unknown else f"; sae={source!r}")
            )
    return values


def train_config(model: nn.Module, layer: int | None, overrides: dict[str, Any]) -> Any:
    """The TrainConfig of the default SAE of `layer` (None: the middle layer)."""
    from sadi.sae.train import TrainConfig

    layer = layer if layer is not None else len(decoder_layers(model)) // 2
    values: dict[str, Any] = {k: tuple(v) if k == "tasks" else v for k, v in overrides.items()}
    return TrainConfig(layer=layer, **values)


def train_default(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    cfg: Any,
    cache_dir: Path,
    data_dir: str | Path | None,
    progress: bool,
) -> tuple[SparseAutoencoder, Path]:
    """Train (or take from the cache) the default SAE of `cfg`; (SAE, its directory)."""
    from sadi.sae.train import train_sae

    sae, directory, _ = train_sae(
        model, tokenizer, cfg, cache_dir=cache_dir, data_dir=data_dir, progress=progress
    )
    return sae, directory


def training_key(model: nn.Module, cfg: Any, data_dir: str | Path | None) -> dict[str, Any]:
    """What determines the default SAE: its cache key (`sadi.sae.train.sae_key`)."""
    from sadi.sae.train import fit_split_texts, sae_key

    return sae_key(model, digest(fit_split_texts(cfg.tasks, data_dir)), cfg)


def cached_entry(cache_dir: Path, key: dict[str, Any]) -> Path | None:
    """The cache directory of the trained SAE of `key`, when it exists."""
    entry = cache_dir / "saes" / digest(key)
    return entry if entry.is_dir() else None


def resolve_layer(sae: SparseAutoencoder, model: nn.Module, layer: int | None) -> int:
    """The decoder layer `sae` reads on `model` (`layer`, or the SAE's own), checked: the SAE's
    width is the model's, the layers agree and exist, and an SAE sadi trained was trained on
    these very weights."""
    n_layers = len(decoder_layers(model))
    d_model = model_shape(model).d_model
    if sae.cfg.d_in != d_model:
        raise ValueError(
            f"the SAE encodes activations of width d_in={sae.cfg.d_in}, but this model's "
            f"residual stream has d_model={d_model}; use an SAE trained on this model"
        )
    if layer is None and sae.cfg.layer is None:
        raise ValueError(
            f"the SAE's config does not say which layer it reads (hook_name="
            f"{sae.cfg.hook_name!r}); set layer=<decoder layer> (intervention.layer=...)"
        )
    if layer is not None and sae.cfg.layer is not None and layer != sae.cfg.layer:
        raise ValueError(
            f"layer={layer} but the SAE reads layer {sae.cfg.layer} (hook_name="
            f"{sae.cfg.hook_name!r}); drop layer= to use the SAE's, or pass the SAE of "
            f"layer {layer}"
        )
    trained_on = sae.cfg.extra.get("sadi_weights_fingerprint")
    if trained_on is not None and trained_on != weights_fingerprint(model):
        raise ValueError(
            f"this SAE was trained by sadi on a model with weights fingerprint {trained_on}, "
            f"not on this one ({weights_fingerprint(model)}); train one for this model: "
            f"python -m sadi.sae train model=... layer={sae.cfg.layer}"
        )
    chosen = layer if layer is not None else sae.cfg.layer
    assert chosen is not None
    return checks.layer_in_range(chosen, n_layers)


__all__ = [
    "TRAINED",
    "cached_entry",
    "check_directory",
    "check_overrides",
    "load",
    "resolve_layer",
    "train_config",
    "train_default",
    "training_key",
]
