"""Export and import of llama.cpp control vectors (GGUF, `general.architecture =
controlvector`).

The file holds one float32 tensor `direction.N` of the model's width per steered layer,
plus `controlvector.model_hint` (the architecture) and `controlvector.layer_count`.
llama.cpp adds `direction.N` (times the scale of `--control-vector-scaled`) to the output
of decoder layer N, counted from 0 as in sadi and HF (`layers[N]`), at every position of
the prompt and of the generation; layer 0 cannot be steered (its buffer starts at layer 1).
That is CAA with `positions=all`: a steerer that edits only some positions (CAA's default
`response`) is exported with a warning that llama.cpp will edit every position.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sadi.core.architectures import model_shape
from sadi.infra.errors import UserError
from sadi.steerers.base import Steerer
from sadi.steerers.caa import CAA, CAAState

log = logging.getLogger(__name__)

ARCH = "controlvector"
# llama.cpp's architecture name (the model hint) of each HF model class sadi steers
MODEL_HINTS = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3",
    "GPT2LMHeadModel": "gpt2",
    "BloomForCausalLM": "bloom",
    "FalconForCausalLM": "falcon",
}


class ControlVectorError(UserError):
    """A steerer that no control vector can hold, or a file that is not one."""


def directions(steerer: Steerer[Any]) -> dict[int, Tensor]:
    """The per-layer vectors a control vector of `steerer` holds; raises ControlVectorError
    for a steerer whose edit is not an added vector per layer."""
    additions = steerer.residual_additions()
    if additions is None:
        raise ControlVectorError(
            f"{steerer.method} (component={steerer.component}) does not add one vector per layer "
            "to the residual stream, which is all a llama.cpp control vector can do; export "
            "CAA, or SAS with mode=decoder"
        )
    if 0 in additions:
        raise ControlVectorError(
            "the steerer edits the output of decoder layer 0, which llama.cpp control vectors "
            "cannot reach (they start at layer 1); fit it at another layer"
        )
    return additions


def export_control_vector(
    steerer: Steerer[Any], path: str | Path, model_hint: str | None = None
) -> Path:
    """Write `steerer` as a llama.cpp control vector GGUF file at `path`; returns it.

    The steerer's strength is part of the vectors (`--control-vector FILE` reproduces it;
    `--control-vector-scaled FILE S` multiplies it by S).
    """
    import gguf

    vectors = directions(steerer)
    policy = getattr(steerer, "edit_policy", "all")
    if policy != "all":
        log.warning(
            "%s edits positions=%s; llama.cpp adds a control vector at every position "
            "(positions=all), so llama.cpp will not run it exactly as sadi does",
            steerer.method,
            policy,
        )
    shape = steerer.fitted_shape()
    hint = model_hint or MODEL_HINTS.get(shape.architecture, shape.architecture)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(out), ARCH)
    writer.add_string(f"{ARCH}.model_hint", hint)
    writer.add_uint32(f"{ARCH}.layer_count", len(vectors))
    for layer, vector in sorted(vectors.items()):
        writer.add_tensor(f"direction.{layer}", vector.detach().float().cpu().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def read_control_vector(path: str | Path) -> tuple[dict[int, Tensor], str | None]:
    """(layer -> vector, model hint) of a control vector GGUF file; raises
    ControlVectorError naming what is wrong."""
    import gguf

    p = Path(path)
    if not p.is_file():
        raise ControlVectorError(f"no control vector file at {p}")
    try:
        reader = gguf.GGUFReader(str(p))
    except Exception as err:  # not a GGUF file at all
        raise ControlVectorError(f"{p} is not a GGUF file ({err})") from err

    def text(key: str) -> str | None:
        field = reader.fields.get(key)
        return None if field is None else bytes(field.parts[field.data[0]]).decode()

    arch = text("general.architecture")
    if arch != ARCH:
        raise ControlVectorError(
            f"{p} is a GGUF file of architecture {arch!r}, not a control vector ({ARCH!r})"
        )
    vectors: dict[int, Tensor] = {}
    for tensor in reader.tensors:
        name = tensor.name
        if not name.startswith("direction."):
            continue
        try:
            layer = int(name.split(".", 1)[1])
        except ValueError as err:
            raise ControlVectorError(f"{p}: tensor {name!r} is not direction.<layer>") from err
        data = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
        vectors[layer] = torch.from_numpy(data.copy())
    if not vectors:
        raise ControlVectorError(f"{p} holds no direction.<layer> tensor")
    return vectors, text(f"{ARCH}.model_hint")


def import_control_vector(
    path: str | Path,
    model: nn.Module,
    layer: int | None = None,
    scale: float = 1.0,
) -> CAA:
    """A CAA steerer of `model` holding the control vector in `path`: `layer` picks one of
    its layers (needed when it has several: CAA steers one layer, llama.cpp all at once),
    `scale` is the multiplier, positions=all (as llama.cpp applies it)."""
    vectors, hint = read_control_vector(path)
    shape = model_shape(model)
    mine = MODEL_HINTS.get(shape.architecture, shape.architecture)
    if hint is not None and hint != mine:
        log.warning("%s was made for a %r model; this one is %r", path, hint, mine)
    widths = {int(v.numel()) for v in vectors.values()}
    if widths != {shape.d_model}:
        raise ControlVectorError(
            f"{path} holds vectors of width {sorted(widths)}, but this model's residual stream "
            f"has d_model={shape.d_model}; use a control vector made for this model"
        )
    if layer is None:
        if len(vectors) != 1:
            raise ControlVectorError(
                f"{path} steers layers {sorted(vectors)} at once; CAA steers one: choose it "
                "with layer= (--layer)"
            )
        (layer,) = vectors
    if layer not in vectors:
        raise ControlVectorError(f"{path} has no direction.{layer}; its layers: {sorted(vectors)}")
    if not 0 <= layer < shape.n_layers:
        raise ControlVectorError(f"layer {layer} is out of range: the model has {shape.n_layers}")
    table = torch.zeros(shape.n_layers, shape.d_model)
    for i, v in vectors.items():
        if 0 <= i < shape.n_layers:
            table[i] = v
    caa = CAA(layer=layer, multiplier=scale, positions="all", progress=False)
    caa._remember_model(model, 0)
    caa.state = caa._check_state(CAAState(vectors=table))
    return caa


__all__ = [
    "ControlVectorError",
    "directions",
    "export_control_vector",
    "import_control_vector",
    "read_control_vector",
]
