"""Exchange CAA vectors with lm-eval's built-in `steered` model (lm_eval/models/hf_steered.py).

Its `.pt` file maps a hookpoint, a module name relative to `model.base_model`, to
`{"action": "add" | "clamp", "steering_vector": Tensor [d_model],
"steering_coefficient": float, "bias": Tensor | None, "head_index": int | None}`; an "add"
entry adds `steering_coefficient * steering_vector` to the module output at every position
(padding included). A CAA vector at layer l is the "add" entry of the decoder layer's
output, e.g. hookpoint "layers.13" on Llama-like models and "h.13" on GPT-2.

That model edits every position, so only `CAA(positions="all")` is exported; imports come
back with positions="all" unless asked otherwise. Imports never unpickle arbitrary objects.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sadi.core.architectures import architecture_of, decoder_layers
from sadi.steerers.base import check_finite
from sadi.steerers.caa import CAA, CaaPositions, CAAState

LM_EVAL_SUFFIXES = (".pt", ".pth")  # the file types lm-eval's `steered` model reads as vectors


def base_model_path(model: nn.Module) -> str:
    """Attribute path of `model.base_model` within `model` ("" when the model is its own)."""
    base = getattr(model, "base_model", model)
    for name, module in model.named_modules():
        if module is base:
            return name
    raise ValueError(f"{type(model).__name__}.base_model is not one of its submodules")


def layers_hookpath(model: nn.Module) -> str:
    """The decoder layers' ModuleList path relative to `model.base_model` (e.g. "layers")."""
    layers = architecture_of(model).layers
    prefix = base_model_path(model)
    if not prefix:
        return layers
    if not layers.startswith(prefix + "."):
        raise ValueError(
            f"the decoder layers {layers!r} of this {type(model).__name__} do not live under "
            f"its base model {prefix!r}; lm-eval's hookpoints are relative to model.base_model"
        )
    return layers[len(prefix) + 1 :]


def lm_eval_hookpoint(model: nn.Module, layer: int) -> str:
    """lm-eval hookpoint of decoder layer `layer`'s output, e.g. "layers.13" or "h.13"."""
    return f"{layers_hookpath(model)}.{layer}"


def export_lm_eval_steer(caa: CAA, model: nn.Module, path: str | Path) -> Path:
    """Write `caa`'s applied vector as a `steer_path` file for lm-eval's `steered` model.

    Args:
        caa: a fitted CAA with positions="all" (lm-eval's model edits every position);
            derive one with `caa.with_params(positions="all")`.
        model: the model it was fitted on (checked against the fingerprint).
        path: the output file, ending in ".pt" or ".pth".

    Returns:
        The path written. The vector is the one `caa` adds (normalised when `caa.normalize`),
        the coefficient its multiplier.

    Example:
        >>> export_lm_eval_steer(caa.with_params(positions="all"), model, "caa.pt")
        then: sadi-lm-eval run --model steered --model_args pretrained=DIR,steer_path=caa.pt
        (sadi-lm-eval loads it with weights_only: tensors and plain data, never code)
    """
    out = Path(path)
    if out.suffix not in LM_EVAL_SUFFIXES:
        raise ValueError(
            f"lm-eval's steered model reads vectors only from {LM_EVAL_SUFFIXES} files, "
            f"got {str(out)!r}; name the file e.g. {out.with_suffix('.pt').name!r}"
        )
    caa.check_fingerprint(model)
    if caa.positions != "all":
        raise ValueError(
            f"lm-eval's steered model adds the vector at every position, but this CAA steers "
            f"positions={caa.positions!r}; export caa.with_params(positions='all') to "
            "acknowledge the difference (or evaluate with the sadi model, which keeps it)"
        )
    entry: dict[str, Any] = {
        "action": "add",
        "steering_vector": caa.vector().detach().cpu().clone().contiguous(),  # [d_model]
        "steering_coefficient": float(caa.multiplier),
        "bias": None,
        "head_index": None,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({lm_eval_hookpoint(model, caa.layer): entry}, out)
    return out


def import_lm_eval_steer(
    path: str | Path, model: nn.Module, *, positions: CaaPositions = "all"
) -> CAA:
    """Read a one-hookpoint "add" file of lm-eval's `steered` model as a CAA for `model`.

    The file is read with `torch.load(weights_only=True)`: tensors and plain containers
    only, never arbitrary pickled objects.

    Args:
        path: the `.pt`/`.pth` file.
        model: the model to steer; the hookpoint must be one of its decoder layers.
        positions: "all" reproduces lm-eval's model; "response" the paper's setting.

    Returns:
        A fitted CAA (normalize=False) whose vector at the hookpoint's layer is the file's
        vector and whose multiplier is its coefficient. The file holds one layer only, so the
        other layers' vectors are zero: `with_params(layer=...)` to another layer is a no-op.
    """
    src = Path(path)
    try:
        config = torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{src} holds objects other than tensors and plain containers; refusing to "
            f"unpickle it. Re-save it with tensors, floats and None only ({err})"
        ) from err
    if not isinstance(config, dict) or not config:
        raise ValueError(f"{src} is not a {{hookpoint: settings}} dict of lm-eval's steered model")
    if len(config) != 1:
        raise ValueError(
            f"{src} steers {len(config)} hookpoints {sorted(config)}; a CAA steers one layer. "
            "Split the file into one file per hookpoint"
        )
    hookpoint, info = next(iter(config.items()))
    if not isinstance(info, dict):
        raise ValueError(f"{src}: the settings of hookpoint {hookpoint!r} are not a dict")
    action = info.get("action")
    if action != "add":
        raise ValueError(
            f"{src}: hookpoint {hookpoint!r} has action {action!r}; only 'add' is a CAA vector "
            "('clamp' sets the projection on a direction and has no CAA equivalent)"
        )
    for key in ("head_index", "bias"):
        if info.get(key) is not None:
            value = info[key]
            shown = f"<tensor {tuple(value.shape)}>" if isinstance(value, Tensor) else repr(value)
            raise ValueError(
                f"{src}: hookpoint {hookpoint!r} has {key}={shown}; CAA adds one vector "
                f"to the whole decoder layer output, so {key} must be None"
            )
    layer = _layer_of(hookpoint, model)
    n_layers = len(decoder_layers(model))
    coefficient = info.get("steering_coefficient", 1.0)  # lm-eval's default
    if isinstance(coefficient, Tensor) and coefficient.numel() == 1:
        coefficient = coefficient.item()
    caa = CAA(
        layer=layer,
        multiplier=check_finite("steering_coefficient", coefficient),
        positions=positions,
    )
    shape = caa._remember_model(model, 0)
    vector = _vector_of(info.get("steering_vector"), shape.d_model, src)
    vectors = torch.zeros(n_layers, shape.d_model)  # [layers, d_model]
    vectors[layer] = vector
    caa.state = CAAState(vectors=vectors)
    return caa


def _layer_of(hookpoint: object, model: nn.Module) -> int:
    prefix = layers_hookpath(model)
    n_layers = len(decoder_layers(model))
    match = re.fullmatch(re.escape(prefix) + r"\.(\d+)", str(hookpoint))
    if match is None or int(match.group(1)) >= n_layers:
        raise ValueError(
            f"hookpoint {hookpoint!r} is not a decoder layer of this {type(model).__name__}; "
            f"a CAA hookpoint is '{prefix}.<n>' with 0 <= n <= {n_layers - 1} (the layer output, "
            "relative to model.base_model)"
        )
    return int(match.group(1))


def _vector_of(value: object, d_model: int, src: Path) -> Tensor:
    if not isinstance(value, Tensor) or value.numel() != d_model or value.dim() > 2:
        got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(
            f"{src}: steering_vector must be a tensor of shape [{d_model}] or [1, {d_model}] "
            f"(this model's d_model), got {got}"
        )
    if not value.is_floating_point() or not bool(torch.isfinite(value).all()):
        raise ValueError(f"{src}: steering_vector must hold finite floats, got {value.dtype}")
    return value.reshape(d_model).float()


__all__ = [
    "base_model_path",
    "export_lm_eval_steer",
    "import_lm_eval_steer",
    "layers_hookpath",
    "lm_eval_hookpoint",
]
