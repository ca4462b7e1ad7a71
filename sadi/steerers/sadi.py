"""SADI: Semantics-Adaptive Dynamic Intervention (arXiv 2410.12299).

Fit: read the component at the last token of prompt+positive and prompt+negative, take the
mean difference over pairs (a head is scored by the mean over its head_dim) and keep the
top-K elements by signed difference across all layers as a binary mask M.

Apply: A' = A + delta_s * (M * A) at the last prompt token of each row only, with
delta_s = strength - 1 (the authors' code sets selected elements to strength * A).

- mode "online": A is the live activation of the steered forward pass.
- mode "faithful": A is the clean (unsteered) activation of the prompt, as in the authors'
  two-pass code; unselected elements stay live. Where the model allows, the clean values
  come from a shadow position in the same forward (`sadi.core.shadow`), else from a clean pass
  over the prompt before the steered one; both give the same numbers up to float rounding.
- variant "fixed" (ablation): adds delta_s * (M * v), v the per-coordinate mean difference,
  independent of the input. variant "random" (ablation): K random elements, seeded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from transformers.tokenization_utils_base import PreTrainedTokenizerBase
from typing_extensions import Self

from sadi.core.activations import read_pair_activations
from sadi.core.architectures import architecture_of, model_site
from sadi.core.hooks import Inputs, LayerHook, hooked
from sadi.core.positions import BatchLayout, PositionPolicy
from sadi.core.shadow import shadow_inputs
from sadi.data.pairs import Pair
from sadi.infra import checks
from sadi.steerers.artifacts import check_finite_tensor, check_mask, check_tensor_shape
from sadi.steerers.base import EditFn, Steerer, check_pairs
from sadi.steerers.spec import MethodSpec

log = logging.getLogger(__name__)
# (component, k, layers, family) already warned about (`SADI._warn_cancelled`): once a process
_WARNED: set[tuple[Any, ...]] = set()
SadiMode = Literal["online", "faithful"]
SadiVariant = Literal["dynamic", "fixed", "random"]


@dataclass
class SADIState:
    """Fitted SADI state.

    delta: [layers, elements] mean difference (pos - neg) in the element grid.
    mask: [layers, elements] bool, the K selected elements.
    direction: [layers, width] per-coordinate mean difference (used by variant "fixed").
    """

    delta: Tensor
    mask: Tensor
    direction: Tensor


class _StopForward(Exception):
    """Raised inside the clean pass once the deepest edited layer has been read."""


class SADI(Steerer[SADIState]):
    """Semantics-adaptive dynamic intervention on one component.

    Args:
        component: "head", "neuron", "neuron_down", "hidden" or "residual".
        k: number of elements to select (heads, neurons or hidden units), across layers.
        strength: the authors' multiplier; selected elements become strength * A.
        mode: "online" (one pass) or "faithful" (clean pass first, as the authors' code).
        variant: "dynamic" (SADI), "fixed" or "random" (the paper's ablations).
        seed: seeds the "random" variant.
        batch_size: batch size of the fitting passes.
        progress: show a progress bar while fitting.

    Example:
        >>> sadi = SADI("head", k=4, strength=5.0).fit(model, tokenizer, pairs)
        >>> with sadi.apply(model):
        ...     out = model(**tokenizer(prompts, return_tensors="pt", padding=True))
    """

    spec = MethodSpec(
        name="sadi",
        strength="strength",
        identity=1.0,  # selected elements become 1 * A
        size="k",
        axes=("k", "strength"),
        # k only chooses elements from the fitted delta: every k of a grid shares one fit
        apply_params=("k", "strength", "mode"),
        default_component="head",
    )
    edit_policy: PositionPolicy = "last_prompt"
    edit_generated = False
    # faithful mode: take the clean values from a shadow position in the steered forward
    # when the model allows (one forward); False always runs the separate clean pass
    one_pass: bool = True

    def __init__(
        self,
        component: str = "head",
        k: int = 4,
        strength: float = 5.0,
        mode: SadiMode = "online",
        variant: SadiVariant = "dynamic",
        seed: int = 0,
        batch_size: int = 16,
        progress: bool = True,
    ) -> None:
        super().__init__(component, batch_size, progress)
        self.k = checks.positive_int("k", k, example="intervention.k=4")
        self.strength = checks.finite("strength", strength)
        self.mode: SadiMode = checks.choice("mode", mode, ("online", "faithful"))
        self.variant: SadiVariant = checks.choice(
            "variant", variant, ("dynamic", "fixed", "random")
        )
        self.seed = checks.integer("seed", seed)
        # faithful mode, current batch: the clean pass's activations per edited layer, or
        # the sequence index of the shadow position when the forward carries one
        self._clean: dict[int, Tensor] = {}
        self._shadow_at: int | None = None

    @property
    def delta_s(self) -> float:
        return self.strength - 1.0

    # ----- fit -----------------------------------------------------------------------
    def fit(
        self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, pairs: Sequence[Pair]
    ) -> Self:
        """Identify the top-K elements from contrastive pairs (deterministic)."""
        check_pairs(pairs)
        shape = self._remember_model(model, len(pairs))
        n_layers, n_elements = shape.grid(self.component)
        self._check_k(n_layers, n_elements)
        pos, neg = read_pair_activations(
            model,
            tokenizer,
            pairs,
            self.component,
            shape,
            batch_size=self.batch_size,
            progress=self.progress,
            desc=f"SADI fit ({self.component})",
        )  # [pairs, layers, width] each
        diff = pos - neg  # [pairs, layers, width]
        direction = diff.mean(dim=0)  # [layers, width]
        if self.component == "head":
            per_head = diff.view(len(pairs), n_layers, shape.n_heads, shape.head_dim)
            delta = per_head.mean(dim=3).mean(dim=0)  # [layers, heads]
        else:
            delta = direction
        self.state = SADIState(delta=delta, mask=self._select(delta), direction=direction)
        self._warn_cancelled(model)
        return self

    def cancelled_layers(self, model: nn.Module) -> list[int]:
        """The layers whose every element of the component this steerer scales where the
        architecture normalises the block's output before the residual add (Gemma 2 and 3):
        the norm divides that uniform scale out, so those layers' edits do (almost) nothing.
        Only the scaling variants ("dynamic", "random"); "fixed" adds a vector."""
        if self.variant == "fixed" or self.component not in architecture_of(model).normed_blocks:
            return []
        mask = self.fitted_state().mask
        return [int(layer) for layer in range(mask.shape[0]) if bool(mask[layer].all())]

    def _warn_cancelled(self, model: nn.Module) -> None:
        layers = self.cancelled_layers(model)
        key = (self.component, self.k, tuple(layers), architecture_of(model).family)
        if layers and key not in _WARNED:
            _WARNED.add(key)
            log.warning(
                "SADI (k=%d) selects every %s element of layer(s) %s of this %s model, whose "
                "norm after that block divides a uniform scale out: those edits do (almost) "
                "nothing; another k selects a part of the layer",
                self.k,
                self.component,
                layers,
                architecture_of(model).family,
            )

    def _check_k(self, n_layers: int, n_elements: int) -> None:
        if self.k > n_layers * n_elements:
            raise ValueError(
                f"k={self.k} exceeds the {n_layers * n_elements} {self.component} elements of "
                f"this model ({n_layers} layers x {n_elements}); "
                f"choose k <= {n_layers * n_elements}"
            )

    def _share_fit(self, source: Self) -> None:
        """Another k selects its own top-K elements of the same fitted delta."""
        state = self.state
        if state is not None and int(state.mask.sum()) != self.k:
            self._check_k(*state.delta.shape)
            self.state = SADIState(state.delta, self._select(state.delta), state.direction)

    def _select(self, delta: Tensor) -> Tensor:
        flat = delta.flatten()
        if self.variant == "random":
            gen = torch.Generator().manual_seed(self.seed)
            chosen = torch.randperm(flat.numel(), generator=gen)[: self.k]
        else:
            # stable sort: ties go to the lower (layer, element) index, deterministically
            chosen = torch.sort(flat, descending=True, stable=True).indices[: self.k]
        mask = torch.zeros(flat.numel(), dtype=torch.bool)
        mask[chosen] = True
        return mask.view_as(delta)

    # ----- apply ---------------------------------------------------------------------
    def width_mask(self) -> Tensor:
        """[layers, width] bool: the mask expanded to activation coordinates."""
        mask = self.fitted_state().mask
        if self.component == "head":
            return mask.repeat_interleave(self.fitted_shape().head_dim, dim=1)
        return mask

    def selected_layers(self) -> list[int]:
        return [int(i) for i in self.fitted_state().mask.any(dim=1).nonzero().flatten()]

    def _edit_fns(self, model: nn.Module) -> dict[int, EditFn]:
        self._warn_cancelled(model)
        masks = self.width_mask()
        direction = self.fitted_state().direction
        ds = self.delta_s
        if ds == 0.0:  # identity for every mode and variant: register nothing
            return {}

        def edit(layer: int, act: Tensor, rows: Tensor, pos: Tensor) -> Tensor:
            m = masks[layer].to(act.device)  # [width]
            live = act[rows, pos]  # [cells, width]
            if self.variant == "fixed":
                v = direction[layer].to(device=act.device, dtype=act.dtype)
                new = torch.where(m, live + ds * v, live)
            else:
                src = live if self.mode == "online" else self._clean_at(layer, act, rows)
                new = torch.where(m, src + ds * src, live)
            return act.index_put((rows, pos), new)

        return {layer: edit for layer in self.selected_layers()}

    def _before_full_forward(
        self, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], layout: BatchLayout
    ) -> Inputs | None:
        if self.mode != "faithful" or self.variant == "fixed" or self.delta_s == 0.0:
            return None  # (delta_s 0: nothing is edited, the forward must stay as called)
        self._clean, self._shadow_at = {}, None
        if self.one_pass and (rewritten := shadow_inputs(model, args, kwargs, layout)):
            self._shadow_at = layout.padded_length  # where shadow_inputs put it
            return rewritten
        self._clean = self._clean_pass(model, args, kwargs, layout)
        return None

    def reads_clean(self) -> bool:
        return self.mode == "faithful" and self.variant != "fixed"

    def clean_layers(self) -> list[int]:
        if self.mode != "faithful" or self.variant == "fixed" or self.delta_s == 0.0:
            return []
        return self.selected_layers()

    def use_clean(self, clean: dict[int, Tensor]) -> None:
        self._clean, self._shadow_at = clean, None

    def _clean_at(self, layer: int, act: Tensor, rows: Tensor) -> Tensor:
        """The unsteered activation at the last prompt token: the shadow's, or the clean pass's."""
        if self._shadow_at is not None:
            return act[rows, self._shadow_at]
        return self._clean[layer]

    @torch.no_grad()
    def _clean_pass(
        self, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], layout: BatchLayout
    ) -> dict[int, Tensor]:
        """Unsteered activations at the last prompt token, for the edited layers.

        Runs the base model on the prefix up to the last prompt token only (causal
        attention makes the rest irrelevant) and stops after the deepest edited layer.
        """
        rows, pos = layout.indices("last_prompt")
        cut = int(pos.max()) + 1
        layers = self.selected_layers()
        out: dict[int, Tensor] = {}

        def grab(layer: int, act: Tensor) -> None:
            out[layer] = act[rows.to(act.device), pos.to(act.device)]
            if layer == layers[-1]:
                raise _StopForward

        inputs = dict(kwargs)
        ids = inputs.pop("input_ids", args[0] if args else None)
        call: dict[str, Any] = {"use_cache": False}
        if ids is not None:
            call["input_ids"] = ids[:, :cut]
        else:
            call["inputs_embeds"] = inputs["inputs_embeds"][:, :cut]
        for key in ("attention_mask", "position_ids"):
            value = inputs.get(key)
            if isinstance(value, Tensor) and value.dim() == 2:
                call[key] = value[:, :cut]
        base = getattr(model, "base_model", model)
        hook_site = model_site(model, self.component)
        with hooked(model, hook_site, [LayerHook(layer, grab) for layer in layers]):
            try:
                base(**call)
            except _StopForward:
                pass
        return out

    # ----- artifacts -----------------------------------------------------------------
    def _check_state(self, state: SADIState) -> SADIState:
        """The loaded state, checked against the recorded model (if any) and `k`."""
        delta = check_finite_tensor("delta", state.delta)
        mask = check_mask("mask", state.mask)
        direction = check_finite_tensor("direction", state.direction)
        if self.shape is not None:
            grid = self.shape.grid(self.component)
            where = f"[n_layers, {self.component} elements] of the recorded fingerprint"
            width = (grid[0], self.shape.width(self.component))
            check_tensor_shape("delta", delta, grid, where)
            check_tensor_shape("mask", mask, grid, where)
            check_tensor_shape(
                "direction",
                direction,
                width,
                f"[n_layers, {self.component} width] of the recorded fingerprint",
            )
        else:
            if delta.dim() != 2:
                raise ValueError(
                    f"tensor 'delta' must be [layers, elements], got {list(delta.shape)}"
                )
            check_tensor_shape("mask", mask, delta.shape, "the shape of 'delta'")
        selected = int(mask.sum())
        if selected != self.k:
            raise ValueError(
                f"the mask selects {selected} elements but k={self.k} (in steerer.json); "
                "a SADI mask holds exactly k elements: correct k, or refit"
            )
        return SADIState(delta=delta, mask=mask, direction=direction)


__all__ = ["SADI", "SADIState"]
