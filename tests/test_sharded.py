"""Sharded models (`model.device_map`), on CPU with a real accelerate map: the first layer
and the head on the CPU, the later layers offloaded to disk (their weights on the meta
device between forwards, loaded by accelerate's hooks onto the execution device for each
forward). The weights fingerprint reads the offloaded weights; every method fits on the
sharded model as on the whole one and steers it to the same log-likelihoods; a run with
`model.device_map` gives the unsharded run's numbers."""

from __future__ import annotations

import json
import tempfile
from functools import cache
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedModel

from sadi.core.activations import encode
from sadi.core.fingerprints import weights_fingerprint
from sadi.core.models import input_device, load_model, module_device
from sadi.pipeline.validate import ConfigError
from sadi.run import run
from sadi.steerers import Steerer
from sadi.steerers.registry import methods
from tests.conftest import PAIRS, byte_tokenizer
from tests.helpers import CONTS, PROMPTS, loglikelihood_requests, steered, steered_lm
from tests.steerers.conftest import build
from tests.test_run import compose_run, tiny_overrides
from tests.test_validate import NO_MODEL

# embeddings, layer 0, the final norm and the head in memory; layers 1 and 2 on disk
MAP = {
    "model.embed_tokens": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.layers.2": "disk",
    "model.norm": "cpu",
    "model.rotary_emb": "cpu",
    "lm_head": "cpu",
}
SCORE_CASES = [("The sky is", " blue"), ("Water is wet and", "A"), ("Hi", " there friend")]


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir: Path) -> Path:
    return tiny_model_dir  # the tiny random Llama, saved (tests/conftest.py)


@cache
def loaded(model_dir: Path, sharded: bool) -> PreTrainedModel:
    if not sharded:
        return load_model(str(model_dir), device="cpu")[0]
    offload = Path(tempfile.mkdtemp(prefix="sadi-offload-"))
    return load_model(str(model_dir), device_map=MAP, offload_folder=offload)[0]


def test_the_map_is_real_and_the_fingerprint_reads_offloaded_weights(model_dir: Path) -> None:
    whole, shards = loaded(model_dir, False), loaded(model_dir, True)
    assert shards.hf_device_map == MAP
    offloaded = [n for n, p in shards.named_parameters() if p.is_meta]
    assert offloaded and all(
        n.startswith(("model.layers.1.", "model.layers.2.")) for n in offloaded
    )
    assert weights_fingerprint(shards) == weights_fingerprint(whole)
    assert input_device(shards) == torch.device("cpu")
    assert module_device(shards.model.layers[2]) == torch.device("cpu")  # executes on CPU


@pytest.mark.parametrize("method", sorted(methods()))
def test_every_method_fits_and_steers_a_sharded_model_as_the_whole_one(
    model_dir: Path, method: str
) -> None:
    whole, shards, tok = loaded(model_dir, False), loaded(model_dir, True), byte_tokenizer()
    torch.manual_seed(1)
    on_whole = build(method).fit(whole, tok, PAIRS)
    torch.manual_seed(1)
    on_shards = build(method).fit(shards, tok, PAIRS)  # reads offloaded layers' activations
    for name, tensor in on_whole.tensors().items():
        torch.testing.assert_close(on_shards.tensors()[name], tensor, rtol=0, atol=1e-6)
    batch = encode(tok, PROMPTS, CONTS)
    torch.testing.assert_close(
        steered(shards, on_shards, batch), steered(whole, on_whole, batch), rtol=0, atol=1e-5
    )
    requests = loglikelihood_requests(SCORE_CASES)

    def scores(model: PreTrainedModel, steerer: Steerer) -> list[float]:
        lm = steered_lm(model, steerer, tok)
        return [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]

    assert scores(shards, on_shards) == pytest.approx(scores(whole, on_whole), abs=1e-5)


def test_a_run_with_a_device_map_gives_the_unsharded_numbers(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    shard_map = "{" + ", ".join(f"{k}: {v}" for k, v in MAP.items()) + "}"
    results = {}
    for name, extra in (
        ("whole", ["model.device=cpu"]),
        ("shards", [f"model.device_map={shard_map}", f"model.offload_folder={tmp_path / 'off'}"]),
    ):
        out = tmp_path / name
        run(compose_run(tiny_overrides(tiny_model_dir, out, *extra)))
        results[name] = json.loads((out / "results.json").read_text())
    assert results["shards"]["config"]["model"]["device_map"] == MAP
    assert results["shards"]["metrics"] == results["whole"]["metrics"]
    assert results["shards"]["baseline_metrics"] == results["whole"]["baseline_metrics"]


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["model.device=cpu", "model.device_map=auto"], "model.device='cpu' with model.device_map"),
        (["model.device_map=everywhere"], r"model.device_map='everywhere': use one of"),
        (["model.device_map={model.layers.0: gpu}"], r"use cuda:N, N, cpu or disk"),
        (["model.device_map={lm_head: disk}"], "set model.offload_folder"),
    ],
)
def test_bad_device_maps_are_refused_before_anything_loads(
    tmp_path: Path, overrides: list[str], match: str
) -> None:
    cfg = compose_run(tiny_overrides(NO_MODEL, tmp_path / "run", *overrides))
    with pytest.raises(ConfigError, match=match):
        run(cfg)
    assert not (tmp_path / "run").exists()
