"""Component addressing as data: one entry per architecture family.

Every steerable component is a (module, side) pair relative to a decoder layer, so no
modeling file is ever forked:

- `head`: input of the attention output projection, the concatenation of the per-head
  outputs, viewed as [batch, pos, heads, head_dim]. Element grid [layers, heads].
- `neuron`: MLP activation as in the SADI authors' code, the output of the activation
  function (SiLU(W_gate x) on gated MLPs). Element grid [layers, d_ff].
- `neuron_down`: the input of the MLP down projection, act(gate) * up on gated MLPs (equal to
  `neuron` on non-gated MLPs such as GPT-2, BLOOM, Falcon). Element grid [layers, d_ff].
- `hidden`: MLP block output, i.e. the down projection's output. Element grid [layers, d_model].
- `residual`: decoder layer output (the residual stream). Element grid [layers, d_model].

Adding an architecture means adding one `Architecture` entry to `ARCHITECTURES`.

Two fingerprints tie a fitted steerer to its model: `model_shape` (architecture and sizes)
and `weights_fingerprint` (`sadi.core.fingerprints`: a hash of every weight, which tells a base
model from its fine-tuned chat variant of the same shape).
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from torch import nn

from sadi.core.components import COMPONENTS, ComponentName
from sadi.core.fingerprints import WEIGHTS_FINGERPRINT_CHARS, weights_fingerprint

Side = Literal["input", "output"]


@dataclass(frozen=True)
class Architecture:
    """Where the components live in one architecture family (paths are attribute paths)."""

    family: str
    model_types: tuple[str, ...]  # `config.model_type` values served by this entry
    layers: str  # from the model root to the ModuleList of decoder layers
    attn_out: str  # from a decoder layer to the attention output projection
    mlp_act: str  # from a decoder layer to the MLP activation-function module
    mlp_down: str  # from a decoder layer to the MLP down projection
    n_heads_attr: str  # config attribute holding the number of attention (query) heads
    d_model_attr: str  # config attribute holding the hidden size
    final_norm: str  # from the model root to the norm after the last decoder layer
    # takes a custom 4D attention mask and explicit position ids as they are, so faithful
    # SADI can run in one forward with a shadow position (sadi/core/shadow.py); ALiBi models
    # derive positions from the 2D mask and cannot
    shadow: bool = True
    # components inside a block whose output passes a norm before the residual add (Gemma 2
    # and 3's post-attention and post-feedforward norms): the norm divides out a uniform
    # scale of every element of one layer's component, so such an edit does (almost) nothing
    normed_blocks: tuple[str, ...] = ()


_LLAMA_LIKE: dict[str, Any] = dict(
    layers="model.layers",
    attn_out="self_attn.o_proj",
    mlp_act="mlp.act_fn",
    mlp_down="mlp.down_proj",
    n_heads_attr="num_attention_heads",
    d_model_attr="hidden_size",
    final_norm="model.norm",
)
# every component inside Gemma's attention and MLP blocks (not the residual stream)
_GEMMA_NORMED = ("head", "neuron", "neuron_down", "hidden")
_BLOOM_LIKE: dict[str, Any] = dict(
    layers="transformer.h",
    attn_out="self_attention.dense",
    mlp_down="mlp.dense_4h_to_h",
    n_heads_attr="n_head",
    d_model_attr="hidden_size",
    final_norm="transformer.ln_f",
)

ARCHITECTURES: dict[str, Architecture] = {
    a.family: a
    for a in (
        Architecture("llama", ("llama",), **_LLAMA_LIKE),
        Architecture("mistral", ("mistral",), **_LLAMA_LIKE),
        Architecture("qwen2", ("qwen2",), **_LLAMA_LIKE),
        Architecture("gemma3", ("gemma3_text",), normed_blocks=_GEMMA_NORMED, **_LLAMA_LIKE),
        Architecture("gemma2", ("gemma2",), normed_blocks=_GEMMA_NORMED, **_LLAMA_LIKE),
        Architecture("qwen3", ("qwen3",), **_LLAMA_LIKE),
        Architecture(
            "gpt2",
            ("gpt2",),
            layers="transformer.h",
            attn_out="attn.c_proj",
            mlp_act="mlp.act",
            mlp_down="mlp.c_proj",
            n_heads_attr="n_head",
            d_model_attr="n_embd",
            final_norm="transformer.ln_f",
        ),
        Architecture("bloom", ("bloom",), mlp_act="mlp.gelu_impl", shadow=False, **_BLOOM_LIKE),
        Architecture(
            "falcon",
            ("falcon",),
            mlp_act="mlp.act",
            **{**_BLOOM_LIKE, "n_heads_attr": "num_attention_heads"},
        ),
    )
}


@dataclass(frozen=True)
class Site:
    """One hook point: module path relative to a decoder layer ("" = the layer itself)."""

    module: str
    side: Side


def site(arch: Architecture, component: str) -> Site:
    """The hook point of `component` in `arch`."""
    check_component(component)
    return {
        "head": Site(arch.attn_out, "input"),
        "neuron": Site(arch.mlp_act, "output"),
        "neuron_down": Site(arch.mlp_down, "input"),
        "hidden": Site(arch.mlp_down, "output"),
        "residual": Site("", "output"),
    }[component]


def check_component(component: str) -> None:
    if component not in COMPONENTS:
        raise ValueError(
            f"unknown component {component!r}; choose one of {list(COMPONENTS)} "
            "(set component=<name> or pass component=...)"
        )


def model_site(model: nn.Module, component: str) -> Site:
    """The hook point of `component` in `model`, checked to exist on its decoder layers."""
    arch = architecture_of(model)
    hook_site = site(arch, component)
    try:
        for layer in decoder_layers(model):
            get_module(layer, hook_site.module)
    except AttributeError as err:
        raise ValueError(
            f"component {component!r} is not available on this {type(model).__name__} "
            f"({arch.family} entry: {hook_site.module!r}): {err}. Choose another component, "
            "or correct the architecture's entry in sadi.core.architectures.ARCHITECTURES"
        ) from err
    return hook_site


def architecture_of(model: nn.Module) -> Architecture:
    """The table entry for `model`, found by `model.config.model_type`."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for arch in ARCHITECTURES.values():
        if model_type in arch.model_types:
            return arch
    known = sorted(t for a in ARCHITECTURES.values() for t in a.model_types)
    near = difflib.get_close_matches(str(model_type), known, n=3)
    raise ValueError(
        f"unsupported architecture model_type={model_type!r}; supported: {known}"
        + (f" (did you mean {near}?)" if near else "")
        + ". Add one `Architecture` entry to sadi.core.architectures.ARCHITECTURES for it."
    )


def get_module(root: nn.Module, path: str) -> nn.Module:
    """`root.<path>` with a readable error listing what exists at the failing step."""
    module = root
    for part in path.split(".") if path else []:
        if not hasattr(module, part):
            children = [n for n, _ in module.named_children()]
            raise AttributeError(
                f"module path {path!r} not found in {type(root).__name__}: "
                f"{type(module).__name__} has no {part!r} (children: {children})"
            )
        module = getattr(module, part)
    return module


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    layers = get_module(model, architecture_of(model).layers)
    assert isinstance(layers, nn.ModuleList)
    return layers


def _in_features(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.in_features
    weight = getattr(module, "weight", None)  # GPT-2's Conv1D stores weight as [in, out]
    if weight is None:
        raise TypeError(f"cannot read the input width of {type(module).__name__}")
    return int(weight.shape[0])


@dataclass(frozen=True)
class ModelShape:
    """Architecture and sizes: the fingerprint a fitted steerer is checked against."""

    architecture: str
    n_layers: int
    n_heads: int
    head_dim: int
    d_model: int
    d_ff: int

    def grid(self, component: str) -> tuple[int, int]:
        """Shape of the element grid [layers, elements] of `component`."""
        check_component(component)
        per_layer = {
            "head": self.n_heads,
            "neuron": self.d_ff,
            "neuron_down": self.d_ff,
            "hidden": self.d_model,
            "residual": self.d_model,
        }[component]
        return (self.n_layers, per_layer)

    def width(self, component: str) -> int:
        """Width of the activation at the hook point (heads * head_dim for `head`)."""
        n = self.grid(component)[1]
        return n * self.head_dim if component == "head" else n

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> ModelShape:
        """The inverse of `as_dict`; a ValueError names missing, unknown or mistyped fields."""
        names = [f.name for f in fields(cls)]
        if not isinstance(data, dict):
            raise ValueError(f"a model shape must be an object with fields {names}, got {data!r}")
        missing = [n for n in names if n not in data]
        unknown = sorted(set(data) - set(names))
        if missing or unknown:
            raise ValueError(
                f"a model shape needs exactly the fields {names}; missing {missing}, "
                f"unknown {unknown}"
            )
        bad = {
            n: data[n]
            for n in names
            if (n == "architecture" and not isinstance(data[n], str))
            or (
                n != "architecture"
                and (isinstance(data[n], bool) or not isinstance(data[n], int) or data[n] <= 0)
            )
        }
        if bad:
            raise ValueError(
                f"model shape fields must be a class name (architecture) and positive "
                f"integers (sizes); got {bad}"
            )
        return cls(**{n: data[n] for n in names})


def model_shape(model: nn.Module) -> ModelShape:
    """Read architecture and sizes from the model's modules and config."""
    arch = architecture_of(model)
    layers = decoder_layers(model)
    first = layers[0]
    n_heads = int(getattr(model.config, arch.n_heads_attr))
    attn_width = _in_features(get_module(first, arch.attn_out))
    return ModelShape(
        architecture=type(model).__name__,
        n_layers=len(layers),
        n_heads=n_heads,
        head_dim=attn_width // n_heads,
        d_model=int(getattr(model.config, arch.d_model_attr)),
        d_ff=_in_features(get_module(first, arch.mlp_down)),
    )


__all__ = [
    "ARCHITECTURES",
    "COMPONENTS",
    "WEIGHTS_FINGERPRINT_CHARS",
    "Architecture",
    "ComponentName",
    "ModelShape",
    "Site",
    "architecture_of",
    "check_component",
    "decoder_layers",
    "get_module",
    "model_shape",
    "model_site",
    "site",
    "weights_fingerprint",
]
