"""A clean shadow of each row's last prompt token, inside the steered forward itself.

Faithful SADI replaces selected elements at the last prompt token p with a multiple of p's
*unsteered* activation. Edits happen at p only, and causal attention keeps every position
before p unsteered, so one extra position per row, appended after the row's end, that

* repeats the token (or embedding) at p, with p's position id,
* attends to exactly the keys p attends to before p, and to itself,
* is attended by no other position, and is never edited,

carries p's clean activations through every layer of the same forward. The edit reads the
shadow (at index `padded_length`) instead of running a second, clean forward of the prompt:
one forward of n + 1 positions instead of two (the shadow's output is cut off before the
LM head). The result equals the two-pass computation up to float rounding (tests compare
both to 1e-5; on SmolLM2 over COPA the log-likelihoods differ by at most 2.5e-5). The
explicit mask can take a different attention kernel than the model's own causal path, so
positions before the edit equal the unsteered forward to float rounding, not bit for bit;
outputs at pad positions are arbitrary, as they are in the model's own path. With
strength 1 (nothing edited) no shadow is added and the forward is exactly the model's.

This needs a custom 4D attention mask and explicit position ids, so `shadow_inputs` returns
None (and the caller runs the clean pass) whenever it cannot be sure the model honours
them: an architecture whose table entry says it cannot (ALiBi models read positions off the
2D mask), an attention implementation other than sdpa or eager, a KV cache in use (a
generation's prefill), requested hidden states or attentions, a sliding window shorter than
the row, or any input it does not know.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sadi.core.architectures import architecture_of
from sadi.core.forwards import forward_kind
from sadi.core.hooks import Inputs
from sadi.core.positions import BatchLayout

# keyword inputs a base model forward may get that the shadow rewrite understands
_KNOWN = {"input_ids", "inputs_embeds", "attention_mask", "position_ids", "use_cache"}
_PASSED_ON = {"return_dict"}  # copied as they are
# ... and those it accepts only when None or False (see `_all_off`)
_OFF = {"past_key_values", "cache", "cache_position", "output_attentions", "output_hidden_states"}
_MASK_FORMAT = {"sdpa": "bool", "eager": "additive"}


def _all_off(kw: dict[str, Any]) -> bool:
    """No cache given, under any keyword (an empty one still makes it a generation's
    prefill, see `sadi.core.forwards`), and no extra outputs asked."""
    return (
        not forward_kind((), kw).has_cache
        and kw.get("cache_position") is None
        and not kw.get("output_attentions")
        and not kw.get("output_hidden_states")
    )


def supports_shadow(model: nn.Module) -> bool:
    """Whether `model`'s architecture can take the shadow position at all (config-level)."""
    config: Any = model.config
    return (
        architecture_of(model).shadow
        and not getattr(config, "alibi", False)
        and getattr(config, "_attn_implementation", None) in _MASK_FORMAT
    )


def shadow_inputs(
    model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], layout: BatchLayout
) -> Inputs | None:
    """The base-model inputs with one shadow position per row appended, or None (see above).

    The shadow sits at sequence index `layout.padded_length`, right after the padded rows.

    Args:
        model: The model whose base model runs the forward.
        args, kwargs: The base model's forward inputs, as its forward pre-hook sees them.
        layout: Where each row's last prompt token is.
    """
    if not supports_shadow(model) or len(args) > 1:
        return None
    kw = dict(kwargs)
    if args:
        if "input_ids" in kw:
            return None
        kw["input_ids"] = args[0]
    if any(k not in _KNOWN | _OFF | _PASSED_ON and v is not None for k, v in kw.items()):
        return None
    if not _all_off(kw) or kw.get("use_cache"):
        return None
    ids, embeds = kw.get("input_ids"), kw.get("inputs_embeds")
    x = ids if ids is not None else embeds
    if x is None or (ids is not None and embeds is not None):
        return None
    batch, n = int(x.shape[0]), int(x.shape[1])
    config: Any = model.config
    window = getattr(config, "sliding_window", None)
    if window is not None and n + 1 > int(window):
        return None
    mask2d, pos_ids = kw.get("attention_mask"), kw.get("position_ids")
    if (mask2d is not None and mask2d.dim() != 2) or (pos_ids is not None and pos_ids.dim() != 2):
        return None

    device = x.device
    rows, p = (t.to(device) for t in layout.indices("last_prompt"))
    if rows.numel() != batch or not torch.equal(rows, torch.arange(batch, device=device)):
        return None  # one last prompt token per row, in row order
    if pos_ids is None:  # what the model itself would use
        pos_ids = torch.arange(n, device=device)[None]
    pos_ids = pos_ids.to(device).expand(batch, n)
    keys = (
        torch.ones(batch, n, dtype=torch.bool, device=device)
        if mask2d is None
        else mask2d.to(device).bool()
    )

    # [batch, n + 1, n + 1]: causal over real keys; the shadow row sees p's keys before p.
    q = torch.arange(n + 1, device=device)
    allowed = (q[None, :, None] >= q[None, None, :]) & torch.cat(
        [keys, torch.zeros(batch, 1, dtype=torch.bool, device=device)], dim=1
    )[:, None, :]
    allowed[:, n, :n] = keys & (q[None, :n] < p[:, None])
    allowed[:, n, n] = True
    allowed |= torch.eye(n + 1, dtype=torch.bool, device=device) & ~allowed.any(-1, keepdim=True)
    mask4d = allowed[:, None]  # [batch, 1, q, k]
    if _MASK_FORMAT[config._attn_implementation] == "additive":
        dtype = x.dtype if x.is_floating_point() else next(model.parameters()).dtype
        mask4d = torch.zeros(mask4d.shape, dtype=dtype, device=device).masked_fill(
            ~mask4d, torch.finfo(dtype).min
        )

    out: dict[str, Any] = {k: kw[k] for k in _PASSED_ON if kw.get(k) is not None}
    key = "input_ids" if ids is not None else "inputs_embeds"
    out[key] = torch.cat([x, x[rows, p][:, None]], dim=1)
    out["position_ids"] = torch.cat([pos_ids, pos_ids[rows, p][:, None]], dim=1)
    out["attention_mask"] = mask4d
    out["use_cache"] = False
    return (), out


def drop_shadow(output: Any, length: int) -> Any:
    """The base model's output with the shadow position cut off (before the LM head)."""
    if isinstance(output, tuple):
        return (output[0][:, :length], *output[1:])
    output["last_hidden_state"] = output["last_hidden_state"][:, :length]
    return output


__all__ = ["drop_shadow", "shadow_inputs", "supports_shadow"]
