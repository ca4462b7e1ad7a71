"""How the steerer contract suite (`test_contract.py`) builds each registered method.

A method is built with its default constructor: its `spec.default_component`,
`progress=False`, and its strength (`spec.strength`) set `STRENGTH_STEP` away from its
identity so that edits are visible. A new method needs an entry in `FACTORIES` only if its
constructor needs arguments (SAS: an SAE) or its defaults do not fit the tiny models (3
layers, 4 heads, d_model 32: CAA's layer 13, LoReFT's 15, ITI's k=48; SADI's k=4, a whole
layer of heads, which a Gemma 2 norm cancels); every other registered method is
picked up from `sadi.steerers.registry.methods()` without an edit here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from sadi.steerers import CAA, ITI, SADI, SAS, Steerer
from sadi.steerers.reft import LoReFT
from sadi.steerers.registry import methods
from tests.test_sae import random_sae

# how far from its identity a steerer of the contract suite steers (the unit is the
# method's own strength parameter: SADI 1 -> 4, the others 0 -> 3)
STRENGTH_STEP = 3.0

# method name -> (component, **keyword arguments) -> an unfitted steerer
Factory = Callable[..., Steerer]
FACTORIES: dict[str, Factory] = {
    # a random TopK SAE of layer 1 of the tiny models (d_model 32)
    "sas": lambda component, **kw: SAS(
        component, sae=random_sae("topk", d_in=32, d_sae=64, k=8, layer=1), **kw
    ),
    "caa": lambda component, **kw: CAA(component, layer=1, **kw),  # default layer 13
    "reft": lambda component, **kw: LoReFT(component, layer=1, **kw),  # default layer 15
    "iti": lambda component, **kw: ITI(component, k=4, **kw),  # default k=48 of 12 heads
    # default k=4 selects all four heads of one layer of the tiny Gemma 2, whose post-attention
    # norm divides that uniform scale out (tested and warned about: tests/steerers/test_sadi.py)
    "sadi": lambda component, **kw: SADI(component, k=3, **kw),
}


def build(method: str, **params: Any) -> Steerer:
    """An unfitted steerer of `method`: its factory (or its class), its default component,
    no progress bars, `STRENGTH_STEP` away from its identity unless `params` set the
    strength."""
    cls = methods()[method]
    spec = cls.spec
    factory: Factory = FACTORIES.get(method, cls)
    strength = {spec.strength: spec.identity + STRENGTH_STEP}
    return factory(spec.default_component, progress=False, **{**strength, **params})


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """Run each module here on one intra-op thread, then restore the setting. The tiny models'
    matmuls gain nothing from threads, and on a shared, loaded machine the waiting threads
    spin: the contract suite took 106 s on two threads there and 11 s on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
