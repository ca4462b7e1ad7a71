"""The vLLM backend's tests run in .venv-vllm (make setup-vllm; `make test` runs them there):
one vLLM engine of the embedded SmolLM2 for the session, beside the HF model it must match,
and one fitted steerer per method and component, each installed on the engine."""

from __future__ import annotations

from typing import Any

import pytest

from sadi.core.fingerprints import weights_fingerprint
from sadi.core.models import DEFAULT_MODEL, load_model, model_path
from sadi.data.pairs import make_pairs
from sadi.data.tasks import load_task
from sadi.sae.model import SAEConfig, SparseAutoencoder

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="session")
def hf() -> tuple[Any, Any]:
    return load_model(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def vlm(hf: tuple[Any, Any]) -> Any:
    from sadi.vllm.lm import SteeredVLLMLM

    model, _ = hf
    return SteeredVLLMLM(
        model_path(DEFAULT_MODEL), weights_fingerprint(model), progress=False, batch_size=16
    )


def _sae(layer: int, d_in: int = 576, d_sae: int = 512, k: int = 24) -> SparseAutoencoder:
    import torch

    g = torch.Generator().manual_seed(0)
    cfg = SAEConfig(
        architecture="topk",
        d_in=d_in,
        d_sae=d_sae,
        k=k,
        apply_b_dec_to_input=False,
        layer=layer,
        hook_name=f"blocks.{layer}.hook_resid_post",
    )
    return SparseAutoencoder(
        cfg,
        torch.randn(d_in, d_sae, generator=g) / d_in**0.5,
        torch.zeros(d_sae),
        torch.randn(d_sae, d_in, generator=g) / d_sae**0.5,
        torch.zeros(d_in),
    )


def fit_steerers(model: Any, tok: Any) -> dict[str, Any]:
    """name -> steerer fitted on `model` (every method vLLM runs; SADI on every component's
    vLLM site)."""
    from sadi.steerers.austeer import AUSteer
    from sadi.steerers.caa import CAA
    from sadi.steerers.iti import ITI
    from sadi.steerers.reft import LoReFT
    from sadi.steerers.sadi import SADI
    from sadi.steerers.sas import SAS

    pairs = make_pairs(load_task("copa").splits["fit"], n_pairs=12, seed=0)
    made = {
        "sadi_head": SADI(component="head", k=6, strength=8.0),
        "sadi_neuron": SADI(component="neuron", k=64, strength=4.0),
        "sadi_neuron_down": SADI(component="neuron_down", k=64, strength=4.0),
        "sadi_hidden": SADI(component="hidden", k=32, strength=4.0),
        "sadi_residual": SADI(component="residual", k=32, strength=3.0),
        "iti": ITI(k=8, alpha=15.0),
        "caa": CAA(layer=10, multiplier=4.0),
        "caa_all": CAA(layer=10, multiplier=4.0, positions="all"),
        "austeer": AUSteer(component="neuron", k=64, alpha=3.0),
        "sas": SAS(sae=_sae(10), layer=10, tau=0.02, lam=4.0),
        "reft": LoReFT(layer=10, rank=4, epochs=2, lr=1e-2, positions="response"),
    }
    for st in made.values():
        st.progress = False
        st.fit(model, tok, pairs)
    return made


@pytest.fixture(scope="session")
def steerers(hf: tuple[Any, Any], vlm: Any) -> dict[str, Any]:
    """name -> fitted steerer (`fit_steerers`), each installed on the engine under its name."""
    model, tok = hf
    made = fit_steerers(model, tok)
    for name, st in made.items():
        vlm.engine.install(name, st)
    return made
