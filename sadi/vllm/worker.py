"""The vLLM worker extension: installs fitted steerers' edits inside vLLM's model, per request.

vLLM mixes `SteeringExtension` into each worker (`LLM(worker_extension_cls=...)`); the
engine calls its `sadi_*` methods through `collective_rpc` with plain values only (a
steerer's directory and a fingerprint), so nothing is pickled across processes.

Which tokens a steerer edits is decided once per forward, from what the model runner holds:
the flattened batch's `positions` (each token's index within its sequence), the attention
metadata's `query_start_loc` (where each request's tokens are) and the requests' own state
(`num_prompt_tokens`, `sampling_params.extra_args`). A request names its steerer in
`extra_args["sadi_steerer"]` and, when it is a scored row, its context length in
`extra_args["sadi_prompt_length"]`; a request without a steerer runs unsteered. The cells are
the HF backend's (`sadi.core.positions.policy_mask` over the request's prompt, which is the
whole vLLM prompt unless a context length is given), plus every generated token for a
steerer that steers generated tokens. Anything this does not recognise (a batch split into
micro-batches, a missing request state) raises instead of steering the wrong rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from sadi.core.architectures import architecture_of, get_module
from sadi.core.fingerprints import stand_in
from sadi.core.positions import policy_mask
from sadi.steerers.base import EditFn, Steerer
from sadi.vllm.sites import VLLMArchitecture, VLLMSite, refusal, vllm_architecture

log = logging.getLogger(__name__)

STEERER_KEY = "sadi_steerer"  # extra_args: the installed steerer's name
PROMPT_LENGTH_KEY = "sadi_prompt_length"  # extra_args: a scored row's context length


@dataclass
class _Installed:
    steerer: Steerer[Any]
    handles: list[RemovableHandle]


def shape_proxy(hf_config: Any, fingerprint: str) -> nn.Module:
    """The HF model of `hf_config` on the meta device (no memory): what a steerer's checks
    and edit functions read (layers, sizes), standing for the weights vLLM holds."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        proxy = AutoModelForCausalLM.from_config(hf_config)
    return stand_in(proxy, fingerprint)


class SteeringExtension:
    """Mixed into vLLM's worker (so `self.model_runner` is the worker's)."""

    model_runner: Any

    # ----- collective_rpc methods -------------------------------------------------
    def sadi_install(self, name: str, directory: str, fingerprint: str) -> list[int]:
        """Load the steerer saved in `directory` under `name` (replacing one of that name)
        and hook its edits; `fingerprint` is that of the weights vLLM loaded (the HF
        backend's model read from the same files). Returns the layers it edits."""
        self.sadi_remove(name)
        steerer = Steerer.load(Path(directory))
        why = refusal(steerer)
        if why is not None:
            raise ValueError(f"the vLLM backend cannot run this steerer: {why}")
        proxy = shape_proxy(self._hf_config(), fingerprint)
        steerer.check_fingerprint(proxy)
        arch = vllm_architecture(architecture_of(proxy).family)
        site = arch.sites[steerer.component]
        layers: Any = get_module(self._vllm_model(), arch.layers)  # a ModuleList
        edits = steerer._edit_fns(proxy)
        self._ensure_layer_hooks(layers)
        handles: list[RemovableHandle] = []
        try:
            for layer, fn in edits.items():
                module = get_module(layers[layer], site.module)
                handles.append(self._hook(module, site, arch, name, layer, fn))
        except BaseException:
            for h in handles:
                h.remove()
            raise
        self._steerers()[name] = _Installed(steerer, handles)
        self._ensure_cells_hook(self._vllm_model())
        return sorted(edits)

    def sadi_remove(self, name: str) -> bool:
        """Remove the steerer `name` and its hooks; False when none was installed."""
        installed = self._steerers().pop(name, None)
        if installed is None:
            return False
        for h in installed.handles:
            h.remove()
        return True

    # ----- internals ----------------------------------------------------------------
    def _steerers(self) -> dict[str, _Installed]:
        if not hasattr(self, "_sadi_steerers"):
            self._sadi_steerers: dict[str, _Installed] = {}
            self._sadi_cells: dict[str, Tensor] = {}
        return self._sadi_steerers

    def _hf_config(self) -> Any:
        return self.model_runner.model_config.hf_config

    def _vllm_model(self) -> nn.Module:
        return self.model_runner.model

    def _ensure_layer_hooks(self, layers: Any) -> None:
        """Record which decoder layer runs: a site module may be one object shared by every
        layer (vLLM's Gemma 3 MLPs share one GeluAndMul), so a hook learns its layer here."""
        if getattr(self, "_sadi_layer_hooks", None) is not None:
            return
        self._sadi_layer = -1

        def enter(index: int) -> Any:
            def pre(module: nn.Module, args: tuple[Any, ...]) -> None:
                self._sadi_layer = index

            return pre

        self._sadi_layer_hooks = [
            layer.register_forward_pre_hook(enter(i)) for i, layer in enumerate(layers)
        ]

    def _ensure_cells_hook(self, stack: nn.Module) -> None:
        """Decide each forward's cells before the model (`forward(input_ids, positions,
        ...)`) runs. (Not on the decoder stack: vLLM's compile decorator replaces its
        `__call__`, which skips module hooks.)"""
        if getattr(self, "_sadi_cells_hook", None) is not None:
            return

        def before(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
            if not isinstance(positions, Tensor):
                raise RuntimeError(
                    "sadi's vLLM extension found no `positions` tensor in the model's "
                    "forward call; this vLLM version is not supported (sadi.vllm.sites)"
                )
            self._sadi_cells = self._cells(positions)

        self._sadi_cells_hook = stack.register_forward_pre_hook(before, with_kwargs=True)

    def _cells(self, positions: Tensor) -> dict[str, Tensor]:
        """Per installed steerer, the flat indices of the tokens it edits in this forward."""
        installed = self._steerers()
        if not installed:
            return {}
        from vllm.forward_context import get_forward_context

        metadata = get_forward_context().attn_metadata
        if metadata is None:  # a dummy / profiling run
            return {}
        if not isinstance(metadata, dict) or not metadata:
            raise RuntimeError(
                "sadi's vLLM extension expects one attention metadata dict per forward (got "
                f"{type(metadata).__name__}); micro-batching is not supported"
            )
        starts = next(iter(metadata.values())).query_start_loc.cpu().long()
        runner = self.model_runner
        req_ids = list(runner.input_batch.req_ids[: len(starts) - 1])
        positions = positions.reshape(-1).cpu().long()
        out: dict[str, list[Tensor]] = {}
        for i, rid in enumerate(req_ids):
            state = runner.requests[rid]
            extra = (state.sampling_params.extra_args or {}) if state.sampling_params else {}
            name = extra.get(STEERER_KEY)
            if name is None:
                continue
            if name not in installed:
                raise ValueError(
                    f"request {rid} asks for steerer {name!r}, which is not installed; "
                    f"installed: {sorted(installed)}"
                )
            steerer = installed[name].steerer
            lo, hi = int(starts[i]), int(starts[i + 1])
            pos = positions[lo:hi]
            seq = torch.tensor(state.num_prompt_tokens)
            prompt = torch.tensor(int(extra.get(PROMPT_LENGTH_KEY, state.num_prompt_tokens)))
            edit = policy_mask(steerer.edit_policy, pos, prompt, seq)
            if steerer.edit_generated:
                edit |= pos >= seq
            out.setdefault(name, []).append(torch.arange(lo, hi)[edit])
        return {name: torch.cat(parts) for name, parts in out.items()}

    def _hook(
        self,
        module: nn.Module,
        site: VLLMSite,
        arch: VLLMArchitecture,
        name: str,
        layer: int,
        fn: EditFn,
    ) -> RemovableHandle:
        def cells(device: torch.device) -> Tensor | None:
            if self._sadi_layer != layer:  # a module shared by the layers, called by another
                return None
            idx = self._sadi_cells.get(name)
            return None if idx is None or idx.numel() == 0 else idx.to(device)

        def apply(act: Tensor, idx: Tensor) -> Tensor:
            """fn on the flattened batch as one row: [T, w] -> [T, w]."""
            rows = torch.zeros_like(idx)
            return fn(layer, act.unsqueeze(0), rows, idx).squeeze(0)

        if site.kind == "pre":

            def pre(mod: nn.Module, args: tuple[Any, ...]) -> Any:
                idx = cells(args[0].device)
                return None if idx is None else (apply(args[0], idx), *args[1:])

            return module.register_forward_pre_hook(pre)

        def post(mod: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            first = output[0] if isinstance(output, tuple) else output
            idx = cells(first.device)
            if idx is None:
                return None
            if site.kind == "out":
                new = apply(first, idx)
            elif site.kind == "residual":
                hidden, residual = output[0], output[1]
                stream = hidden + residual
                edited = apply(stream, idx)
                new = hidden.index_put((idx,), hidden[idx] + (edited[idx] - stream[idx]))
            else:  # gated_act: output = act(gate) * up; HF's `neuron` is act(gate)
                x = args[0]
                width = x.shape[-1] // 2
                gate, up = x[..., :width], x[..., width:]
                edited = apply(arch.activation(gate), idx)
                new = first.index_put((idx,), edited[idx] * up[idx])
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return module.register_forward_hook(post)


__all__ = ["PROMPT_LENGTH_KEY", "STEERER_KEY", "SteeringExtension", "shape_proxy"]
