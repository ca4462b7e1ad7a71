"""model.backend=vllm against the HF backend on the embedded SmolLM2 (float32): steered
log-likelihoods within 1e-3 and identical greedy generations for every method (SADI online
on every component, ITI, CAA, AUSteer, SAS, LoReFT), per-request steering in one mixed batch, the
prefix-cache salt, the refusals, and `python -m sadi.run model.backend=vllm` reproducing a
run's numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from lm_eval.api.instance import Instance

from sadi.data.tasks import load_task
from sadi.eval.lm import SteeredLM
from sadi.vllm.engine import PROBE, Request, VLLMError, check_version, hf_token_logprobs
from tests.helpers import loglikelihood_requests

pytestmark = pytest.mark.vllm

METHODS = [
    "sadi_head",
    "sadi_neuron",
    "sadi_neuron_down",
    "sadi_hidden",
    "sadi_residual",
    "iti",
    "caa",
    "caa_all",
    "austeer",
    "sas",
    "reft",
]
TOL = 1e-3


def _requests() -> list[Instance]:
    items = load_task("copa").splits["select"][:4]
    return loglikelihood_requests([(it.question, ch) for it in items for ch in it.choices])


def _hf_lm(hf: tuple[Any, Any], steerer: Any) -> SteeredLM:
    model, tok = hf
    return SteeredLM(
        model, steerer=steerer, tokenizer=tok, batch_size=8, device="cpu", progress=False
    )


@pytest.fixture(scope="module")
def unsteered(hf: tuple[Any, Any]) -> torch.Tensor:
    return torch.tensor([ll for ll, _ in _hf_lm(hf, None).loglikelihood(_requests())])


def test_unsteered_scores_equal_hf(hf: tuple[Any, Any], vlm: Any, unsteered: torch.Tensor) -> None:
    got = torch.tensor([ll for ll, _ in vlm.with_steerer(None).loglikelihood(_requests())])
    assert float((got - unsteered).abs().max()) <= TOL


@pytest.mark.parametrize("name", METHODS)
def test_steered_scores_equal_hf_and_move(
    name: str, hf: tuple[Any, Any], vlm: Any, steerers: dict[str, Any], unsteered: torch.Tensor
) -> None:
    reqs = _requests()
    want = [r for r in _hf_lm(hf, steerers[name]).loglikelihood(reqs)]
    got = vlm.with_steerer(name).loglikelihood(reqs)
    want_ll = torch.tensor([ll for ll, _ in want])
    got_ll = torch.tensor([ll for ll, _ in got])
    assert float((got_ll - want_ll).abs().max()) <= TOL, (got_ll, want_ll)
    assert [g for _, g in got] == [g for _, g in want]  # is_greedy agrees
    # not vacuous: the steering moved the scores
    assert float((want_ll - unsteered).abs().max()) > 1e-2


@pytest.mark.parametrize("name", [None, *METHODS])
def test_greedy_generations_identical(
    name: str | None, hf: tuple[Any, Any], vlm: Any, steerers: dict[str, Any]
) -> None:
    prompts = ["The best way to learn a language is", "Once upon a time, a small robot"]
    reqs = [
        Instance("generate_until", {}, (p, {"until": ["\n\n"], "max_gen_toks": 20}), i)
        for i, p in enumerate(prompts)
    ]
    want = _hf_lm(hf, None if name is None else steerers[name]).generate_until(reqs)
    got = vlm.with_steerer(name).generate_until(reqs)
    assert got == want


def test_mixed_per_request_steering_in_one_batch(
    hf: tuple[Any, Any], vlm: Any, steerers: dict[str, Any]
) -> None:
    """One engine call, rows under different steerers (and none), different prompt
    lengths: each row equals the HF backend's row under its own steerer."""
    model, tok = hf
    ids = list(tok(PROBE)["input_ids"])
    names: list[str | None] = [None, "caa", "sadi_head", "iti", None, "austeer", "sas", "caa_all"]
    reqs = [Request(ids[: len(ids) - i], name, 6 + 2 * i) for i, name in enumerate(names)]
    got = vlm.engine.token_logprobs(reqs)
    for r, g in zip(reqs, got):
        st = None if r.steerer is None else steerers[r.steerer]
        want = hf_token_logprobs(model, st, r.tokens, r.prompt_length)
        assert max(abs(a - b) for a, b in zip(g, want)) <= TOL, r.steerer


def test_prefix_cache_is_salted_per_steering(
    hf: tuple[Any, Any], vlm: Any, steerers: dict[str, Any]
) -> None:
    """A steered request after an unsteered one with the same long prompt: without the
    salt, vLLM's prefix cache serves the unsteered KV blocks (reproduced below); with it
    the steered next-token log-probs are the HF backend's."""
    from vllm import SamplingParams

    model, tok = hf
    ids = list(tok(" ".join([PROBE] * 8))["input_ids"])
    assert len(ids) > 256  # several full KV blocks
    params = SamplingParams(temperature=0, max_tokens=1, logprobs=5)
    engine = vlm.engine
    engine.generate([Request(ids)], params)  # fills the cache, unsteered

    def next_token_logprobs(out: Any) -> dict[int, float]:
        return {t: float(lp.logprob) for t, lp in out.outputs[0].logprobs[0].items()}

    st = steerers["caa_all"]  # edits every prompt position: every cached block differs
    with torch.no_grad(), st.apply(model):
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    hf_lp = torch.log_softmax(logits.float(), -1)

    (salted,) = engine.generate([Request(ids, "caa_all")], params)
    for t, lp in next_token_logprobs(salted).items():
        assert abs(lp - float(hf_lp[t])) <= TOL

    # the failure the salt prevents: the same steered request without a salt
    prompt, steered_params = engine.prompt(Request(ids, "caa_all"), params)
    del prompt["cache_salt"]
    (unsalted,) = engine.llm.generate([prompt], sampling_params=[steered_params], use_tqdm=False)
    diffs = [abs(lp - float(hf_lp[t])) for t, lp in next_token_logprobs(unsalted).items()]
    assert max(diffs) > 1e-2


def test_refusals(hf: tuple[Any, Any], vlm: Any) -> None:
    from sadi.steerers.lora import LoRA
    from sadi.steerers.sadi import SADI

    model, tok = hf
    with pytest.raises(VLLMError, match="use intervention.mode=online"):
        vlm.engine.install("faithful", SADI(k=4, mode="faithful", progress=False))
    with pytest.raises(VLLMError, match="vLLM's own LoRA"):
        vlm.engine.install("lora", LoRA(progress=False))
    with pytest.raises(VLLMError, match="no steerer named 'nope' is installed"):
        vlm.engine.generate([Request([1, 2, 3], "nope")], None)


def test_self_test_refuses_a_steerer_that_differs(
    hf: tuple[Any, Any], vlm: Any, steerers: dict[str, Any]
) -> None:
    model, tok = hf
    assert vlm.engine.self_test("caa", steerers["caa"], model, tok) <= TOL
    other = steerers["caa"].with_params(multiplier=2.0)
    with pytest.raises(VLLMError, match="disagree on the self-test prompt"):
        vlm.engine.self_test("caa", other, model, tok)


def test_an_untested_vllm_version_is_refused_unless_allowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sadi.vllm.engine as engine

    monkeypatch.setattr(engine, "TESTED_VLLM_VERSIONS", ("0.0.1",))
    with pytest.raises(VLLMError, match="not a version sadi's vLLM backend was tested on"):
        check_version(False)
    assert engine.check_version(True)


def test_the_lm_eval_vllm_it_relies_on_is_checked(
    vlm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sadi.vllm.lm as lm

    lm.check_lm_eval_vllm(vlm)  # the pinned lm-eval: as relied on
    changed = {**lm._VLLM_METHODS, "_parse_logprobs": ("tokens", "outputs", "context_length")}
    monkeypatch.setattr(lm, "_VLLM_METHODS", changed)
    with pytest.raises(RuntimeError, match="_parse_logprobs"):
        lm.check_lm_eval_vllm()
    monkeypatch.setattr(lm, "_VLLM_ATTRIBUTES", ("model", "renamed_attribute"))
    monkeypatch.setattr(lm, "_VLLM_METHODS", {})
    with pytest.raises(RuntimeError, match="renamed_attribute"):
        lm.check_lm_eval_vllm(vlm)


def _run(out: Path, backend: str, methods: str) -> list[Path]:
    cmd = [
        sys.executable,
        "-m",
        "sadi.run",
        "-m",
        f"model.backend={backend}",
        f"intervention={methods}",
        "task.limit=10",
        "task.n_pairs=8",
        "task.splits=[select]",
        "logger=none",
        "progress=false",
        f"hydra.sweep.dir={out}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sorted(out.glob("*/results.json"))


@pytest.mark.parametrize("methods", ["caa,sadi,iti,austeer"])
def test_sadi_run_with_backend_vllm_reproduces_the_hf_backend(tmp_path: Path, methods: str) -> None:
    """A sweep over the methods (one engine for all its points), run on both backends:
    the same metrics and each item's log-likelihoods within the tolerance."""
    ours = _run(tmp_path / "vllm", "vllm", methods)
    theirs = _run(tmp_path / "hf", "hf", methods)
    assert len(ours) == len(theirs) == len(methods.split(","))
    for a, b in zip(ours, theirs):
        ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
        assert ra["config"]["intervention"]["name"] == rb["config"]["intervention"]["name"]
        for key in ("metrics", "baseline_metrics"):
            for metric, value in rb[key]["select"].items():
                assert abs(ra[key]["select"][metric] - value) <= 1e-3, (a, metric)
        rows_a = (a.parent / "samples_copa_select.jsonl").read_text().splitlines()
        rows_b = (b.parent / "samples_copa_select.jsonl").read_text().splitlines()
        for x, y in zip(rows_a, rows_b):
            la, lb = json.loads(x)["loglikelihoods"], json.loads(y)["loglikelihoods"]
            assert max(abs(p - q) for p, q in zip(la, lb)) <= TOL
        assert ra["sweep_engine"]["reason"] == "model.backend=vllm"


def test_generation_benchmark_runs(tmp_path: Path) -> None:
    """benchmarks/bench_vllm.py end to end on a few prompts (its figures are not checked:
    timings are never asserted); every side generated exactly the tokens asked for."""
    from benchmarks import bench_vllm

    result = bench_vllm.run(prompts=3, tokens=4, repeats=1, out_dir=tmp_path)
    written = json.loads((tmp_path / "vllm_generation.json").read_text())
    assert written["median_tokens_per_s"] == result["median_tokens_per_s"]
    assert set(result["tokens_per_s"]) == {"hf_steered", "vllm_steered", "vllm_unsteered"}
    assert all(len(v) == 1 and v[0] > 0 for v in result["tokens_per_s"].values())
