"""Hooks only through context managers that remove exactly the handles they registered.

`hooked` resolves every module first (so a bad path fails before anything is registered),
registers forward (output side) or forward-pre (input side) hooks, and removes them in a
`finally`, so an exception inside the block never leaves a hook behind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from sadi.core.architectures import Site, decoder_layers, get_module

# (layer index, activation [batch, pos, width]) -> replacement activation, or None to keep it
ActivationFn = Callable[[int, Tensor], Tensor | None]


@dataclass(frozen=True)
class LayerHook:
    layer: int
    fn: ActivationFn


def _output_hook(layer: int, fn: ActivationFn) -> Callable[..., Any]:
    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        act = output[0] if isinstance(output, tuple) else output
        new = fn(layer, act)
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return hook


def _input_hook(layer: int, fn: ActivationFn) -> Callable[..., Any]:
    def hook(module: nn.Module, args: tuple[Any, ...]) -> Any:
        new = fn(layer, args[0])
        return None if new is None else (new, *args[1:])

    return hook


@contextmanager
def hooked(model: nn.Module, site: Site, hooks: list[LayerHook]) -> Iterator[None]:
    """Run `fn(layer, activation)` at `site` of each listed layer while the block runs.

    Side effects: registers hooks on the model's modules; removes exactly those on exit.
    """
    layers = decoder_layers(model)
    bad = [h.layer for h in hooks if not 0 <= h.layer < len(layers)]
    if bad:
        raise IndexError(f"layers {bad} out of range: the model has {len(layers)} layers")
    modules = [(get_module(layers[h.layer], site.module), h) for h in hooks]
    handles: list[RemovableHandle] = []
    try:
        for module, h in modules:
            if site.side == "output":
                handles.append(module.register_forward_hook(_output_hook(h.layer, h.fn)))
            else:
                handles.append(module.register_forward_pre_hook(_input_hook(h.layer, h.fn)))
        yield
    finally:
        for handle in handles:
            handle.remove()


Inputs = tuple[tuple[Any, ...], dict[str, Any]]
# (args, kwargs) -> None to run the forward as called, or replacement (args, kwargs)
ForwardObserver = Callable[[tuple[Any, ...], dict[str, Any]], Inputs | None]
# output -> None to keep it, or a replacement output
OutputRewriter = Callable[[Any], Any]


@contextmanager
def observe_forward(
    model: nn.Module, fn: ForwardObserver, after: OutputRewriter | None = None
) -> Iterator[None]:
    """Call `fn(args, kwargs)` before each top-level forward of `model`; removed on exit.

    `fn` may return replacement inputs; `after(output)`, when given, runs after each forward
    and may return a replacement output (e.g. to cut off positions `fn` appended).
    """
    handles = [
        model.register_forward_pre_hook(
            lambda module, args, kwargs: fn(args, kwargs), with_kwargs=True
        )
    ]
    try:
        if after is not None:
            handles.append(model.register_forward_hook(lambda module, args, out: after(out)))
        yield
    finally:
        for handle in handles:
            handle.remove()
