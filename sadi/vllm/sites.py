"""Where each component lives inside vLLM's models (data, one entry per architecture family),
the vLLM versions this was tested on, and which steerers vLLM cannot run (and why).

vLLM fuses modules that the HF models keep apart, so a site is (module, how to edit):

- `pre`: the module's input is the component (`o_proj` for heads, `down_proj` for
  `neuron_down`), as in HF;
- `out`: the module's output is the component (the MLP block's output for `hidden`);
- `residual`: the decoder layer returns `(hidden_states, residual)` and the next fused
  add-RMSNorm sums them, so the residual stream is their sum; an edit adds its change to
  `hidden_states`;
- `gated_act`: vLLM's fused `SiluAndMul`/`GeluAndMul` takes [gate, up] and returns
  act(gate) * up, the HF `neuron_down`; the HF `neuron` (act(gate)) is edited before the
  product: act(gate) is recomputed, edited, and multiplied by up for the edited rows.

Torch-only: importable without vLLM (the run checks a config before vLLM starts).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from torch import Tensor, nn

if TYPE_CHECKING:
    from sadi.steerers.base import Steerer

# vLLM releases whose internals (decoder layer output, forward context, input batch) this
# module was tested against; another version is refused unless allowed, and then the
# start-up self-test alone vouches for it
TESTED_VLLM_VERSIONS: tuple[str, ...] = ("0.32.0",)

EditKind = Literal["pre", "out", "residual", "gated_act"]


@dataclass(frozen=True)
class VLLMSite:
    """One component's hook point relative to a vLLM decoder layer."""

    module: str  # attribute path from the decoder layer ("" = the layer itself)
    kind: EditKind


@dataclass(frozen=True)
class VLLMArchitecture:
    """Where the components live in one family's vLLM model."""

    family: str  # the HF family (`sadi.core.architectures.ARCHITECTURES`)
    layers: str  # from the vLLM model root to its decoder layers
    sites: dict[str, VLLMSite]
    activation: Callable[[Tensor], Tensor]  # the gated MLP's act(gate), as HF computes it


def _silu(x: Tensor) -> Tensor:
    return nn.functional.silu(x)


def _gelu_tanh(x: Tensor) -> Tensor:
    return nn.functional.gelu(x, approximate="tanh")


_LLAMA_SITES = {
    "head": VLLMSite("self_attn.o_proj", "pre"),
    "neuron": VLLMSite("mlp.act_fn", "gated_act"),
    "neuron_down": VLLMSite("mlp.down_proj", "pre"),
    "hidden": VLLMSite("mlp", "out"),
    "residual": VLLMSite("", "residual"),
}

VLLM_ARCHITECTURES: dict[str, VLLMArchitecture] = {
    a.family: a
    for a in (
        VLLMArchitecture("llama", "model.layers", _LLAMA_SITES, _silu),
        VLLMArchitecture("mistral", "model.layers", _LLAMA_SITES, _silu),
        VLLMArchitecture("qwen2", "model.layers", _LLAMA_SITES, _silu),
        VLLMArchitecture("qwen3", "model.layers", _LLAMA_SITES, _silu),
        # Gemma 3: its post-attention / post-feedforward norms sit inside the block, so the
        # layer still returns (hidden_states, residual); gated GELU (tanh)
        VLLMArchitecture("gemma3", "model.layers", _LLAMA_SITES, _gelu_tanh),
    )
}


def vllm_architecture(family: str) -> VLLMArchitecture:
    """The vLLM entry of an HF family; raises ValueError naming the supported ones."""
    if family not in VLLM_ARCHITECTURES:
        raise ValueError(
            f"the vLLM backend does not steer the {family!r} family yet (its vLLM modules are "
            f"not in sadi.vllm.sites); supported: {sorted(VLLM_ARCHITECTURES)}. Use "
            "model.backend=hf, or add one VLLMArchitecture entry and run tests/vllm"
        )
    return VLLM_ARCHITECTURES[family]


def refusal(steerer: Steerer[Any]) -> str | None:
    """Why the vLLM backend cannot run `steerer` as the HF backend does, or None."""
    from sadi.steerers.base import Steerer

    if type(steerer).apply is not Steerer.apply:
        return (
            f"{steerer.method} installs its own hooks on modules that vLLM fuses (e.g. q/k/v "
            "into qkv_proj); its peft adapter (steerer/peft/) runs in vLLM's own LoRA support"
        )
    if steerer.reads_clean():
        return (
            f"{steerer.method} reads the unsteered activation of each row's last prompt token "
            "(a second, clean pass of the same batch), which a serving engine does not run; "
            "use intervention.mode=online"
        )
    return None


__all__ = [
    "TESTED_VLLM_VERSIONS",
    "VLLMArchitecture",
    "VLLMSite",
    "VLLM_ARCHITECTURES",
    "refusal",
    "vllm_architecture",
]
