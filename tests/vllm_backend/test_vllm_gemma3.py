"""The embedded Gemma 3 270M through the vLLM backend: SADI online on every component, CAA
and ITI give the HF backend's log-probs (1e-3) and generations. Gemma's vLLM MLPs share one
GeluAndMul module across layers: each hook learns its layer from the decoder layer that
runs (without that, a `neuron` edit of one layer fired at every layer)."""

from __future__ import annotations

from typing import Any

import pytest
from lm_eval.api.instance import Instance

from sadi.core.fingerprints import weights_fingerprint
from sadi.core.models import load_model, model_path
from sadi.data.pairs import make_pairs
from sadi.data.tasks import load_task
from sadi.eval.lm import SteeredLM
from sadi.vllm.engine import PROBE, Request, hf_token_logprobs

pytestmark = pytest.mark.vllm

SOURCE = "embedded:gemma3-270m"


@pytest.fixture(scope="module")
def gemma() -> dict[str, Any]:
    from sadi.steerers.caa import CAA
    from sadi.steerers.iti import ITI
    from sadi.steerers.sadi import SADI
    from sadi.vllm.lm import SteeredVLLMLM

    model, tok = load_model(SOURCE)
    pairs = make_pairs(load_task("copa").splits["fit"], n_pairs=8, seed=0)
    steerers = {
        **{
            f"sadi_{c}": SADI(component=c, k=32, strength=4.0)
            for c in ("head", "neuron", "neuron_down", "hidden", "residual")
        },
        "caa": CAA(layer=8, multiplier=8.0),
        "iti": ITI(k=8, alpha=15.0),
    }
    lm = SteeredVLLMLM(model_path(SOURCE), weights_fingerprint(model), progress=False)
    for name, st in steerers.items():
        st.progress = False
        st.fit(model, tok, pairs)
        lm.engine.install(name, st)
    return {"model": model, "tok": tok, "steerers": steerers, "lm": lm}


@pytest.mark.parametrize(
    "name",
    ["sadi_head", "sadi_neuron", "sadi_neuron_down", "sadi_hidden", "sadi_residual", "caa", "iti"],
)
def test_gemma3_steered_logprobs_and_generations_equal_hf(gemma: dict[str, Any], name: str) -> None:
    model, tok, st = gemma["model"], gemma["tok"], gemma["steerers"][name]
    ids = list(tok(PROBE)["input_ids"])
    p = len(ids) // 2
    (got,) = gemma["lm"].engine.token_logprobs([Request(ids, name, p)])
    want = hf_token_logprobs(model, st, ids, p)
    plain = hf_token_logprobs(model, None, ids, p)
    assert max(abs(a - b) for a, b in zip(got, want)) <= 1e-3
    assert max(abs(a - b) for a, b in zip(want, plain)) > 1e-3  # the steering moved them
    reqs = [
        Instance("generate_until", {}, ("The city is", {"until": ["\n\n"], "max_gen_toks": 12}), 0)
    ]
    hf = SteeredLM(model, steerer=st, tokenizer=tok, batch_size=4, device="cpu", progress=False)
    assert gemma["lm"].with_steerer(name).generate_until(reqs) == hf.generate_until(reqs)
