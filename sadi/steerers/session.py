"""The hook lifetime of one `Steerer.apply`: which cells each forward edits, and the hooks that
edit them, registered on entry and removed on exit (also when the block raises).

Every base-model forward under `apply` is classified (`sadi.core.forwards`): a full forward
(scoring rows, or a generation's prefill) edits the cells of the steerer's `edit_policy` in
the batch's layout; a KV-cache decode step edits every new token when the steerer steers
generated tokens (`edit_generated`), else nothing. The sweep engine's suffix forwards
(`SteeringHandle.continue_prefix`) edit the policy's cells of rows that start at their last
prompt token.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from sadi.core.architectures import model_site
from sadi.core.forwards import forward_kind
from sadi.core.hooks import Inputs, LayerHook, hooked, observe_forward
from sadi.core.positions import BatchLayout
from sadi.core.shadow import drop_shadow

if TYPE_CHECKING:
    from sadi.steerers.base import Steerer

# (layer, activation [batch, pos, width], rows [n], positions [n]) -> edited activation
EditFn = Callable[[int, Tensor, Tensor, Tensor], Tensor]
Cells = tuple[Tensor, Tensor]  # (rows [n], positions [n])


class SteeringHandle:
    """Handed out by `Steerer.apply`: tells the hooks where the current batch's rows are.

    By default the layout of each forward is read off its attention mask, with the whole
    row taken as the prompt (right for plain prompts and for `generate`). Callers scoring
    prompt + continuation rows set the layout explicitly before each forward.
    """

    def __init__(self) -> None:
        self.layout: BatchLayout | None = None
        # the sweep engine's suffix forwards (`sadi.sweep.prefix`): rows continue cached
        # prefixes (unsteered, or this steerer's own when it edits the prompt); `clean` holds
        # the unsteered activations at the last prompt token
        self.continues_prefix = False
        self.clean: dict[int, Tensor] = {}

    def set_layout(self, layout: BatchLayout | None) -> None:
        """Use `layout` for the following forwards (None: read it off the attention mask)."""
        self.layout, self.continues_prefix, self.clean = layout, False, {}

    def continue_prefix(self, layout: BatchLayout, clean: dict[int, Tensor]) -> None:
        """The following forwards continue cached prefixes (unsteered, or steered by this
        steerer when it edits the prompt too): each row of `layout` starts at its last
        prompt token (prompt length 1) and the positions before it are in the KV cache;
        `clean[layer]` [batch, width] is the unsteered activation of the component at that
        token (`Steerer.clean_layers`)."""
        self.layout, self.continues_prefix, self.clean = layout, True, clean


class HookSession:
    """The hooks of one `apply` of `steerer` on `model`, and the cells the current forward
    edits. Use `open()` as a context manager."""

    def __init__(self, steerer: Steerer[Any], model: nn.Module) -> None:
        self.steerer, self.model = steerer, model
        self.handle = SteeringHandle()
        self.cells: Cells | None = None
        self.busy = False  # a method's own inner pass (faithful SADI's) runs unsteered
        self.appended: int | None = None  # original length while a rewritten forward runs

    def before_forward(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Inputs | None:
        """Decide the cells of this forward; may rewrite its inputs (faithful SADI's shadow)."""
        if self.busy:
            return None
        self.appended = None
        kind = forward_kind(args, kwargs)
        st, handle = self.steerer, self.handle
        if handle.continues_prefix:  # the sweep engine: rows start at the last prompt token
            suffix = handle.layout
            assert suffix is not None
            if (suffix.batch_size, suffix.padded_length) != (kind.batch, kind.length):
                raise ValueError(
                    f"the suffix layout is for {(suffix.batch_size, suffix.padded_length)} "
                    f"but the forward got {(kind.batch, kind.length)}"
                )
            self.cells = suffix.indices(st.edit_policy)
            st.use_clean(handle.clean)
            return None
        if kind.decoding:
            self.cells = None
            if st.edit_generated:
                rows = torch.arange(kind.batch).repeat_interleave(kind.length)
                self.cells = (rows, torch.arange(kind.length).repeat(kind.batch))
            return None
        layout = handle.layout or self._layout_of(kwargs, kind.batch, kind.length)
        if (layout.batch_size, layout.padded_length) != (kind.batch, kind.length):
            raise ValueError(
                f"the layout set on the steering handle is for a batch of "
                f"{(layout.batch_size, layout.padded_length)} but the forward got "
                f"{(kind.batch, kind.length)}; call handle.set_layout() for each batch"
            )
        # The same policy serves scoring rows and a generation's prefill: a method that
        # steers generated tokens uses "response" (the last prompt token, whose output
        # predicts the first answer token, and every continuation token), so scoring a
        # continuation edits exactly the cells generating it token by token does.
        self.cells = layout.indices(st.edit_policy)
        self.busy = True
        try:
            rewritten = st._before_full_forward(self.model, args, kwargs, layout)
        finally:
            self.busy = False
        self.appended = None if rewritten is None else kind.length
        return rewritten

    @staticmethod
    def _layout_of(kwargs: dict[str, Any], batch: int, length: int) -> BatchLayout:
        """A prompt (or a generation's prefill): the whole row is prompt."""
        mask = kwargs.get("attention_mask")
        if mask is None or mask.dim() != 2:
            mask = torch.ones(batch, length, dtype=torch.long)
        return BatchLayout.from_attention_mask(mask.cpu())

    def after_forward(self, output: Any) -> Any:
        length, self.appended = self.appended, None
        return None if length is None else drop_shadow(output, length)

    def hook(self, fn: EditFn) -> Callable[[int, Tensor], Tensor | None]:
        """A layer hook applying `fn` at this forward's cells (none: the activation as is)."""

        def edit(layer: int, act: Tensor) -> Tensor | None:
            where = self.cells
            if self.busy or where is None or where[0].numel() == 0:
                return None
            rows, pos = where
            return fn(layer, act, rows.to(act.device), pos.to(act.device))

        return edit

    @contextmanager
    def open(self) -> Iterator[SteeringHandle]:
        """Register the hooks (every module name resolved first); remove exactly them on exit."""
        base = getattr(self.model, "base_model", self.model)
        edits = self.steerer._edit_fns(self.model)
        hooks = [LayerHook(layer, self.hook(fn)) for layer, fn in edits.items()]
        hook_site = model_site(self.model, self.steerer.component)
        with ExitStack() as stack:
            stack.enter_context(observe_forward(base, self.before_forward, self.after_forward))
            stack.enter_context(hooked(self.model, hook_site, hooks))
            yield self.handle


__all__ = ["Cells", "EditFn", "HookSession", "SteeringHandle"]
