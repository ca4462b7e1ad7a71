"""model.backend=vllm in bfloat16 and float16 against the HF backend in the same dtype, on
the embedded SmolLM2: the two backends' kernels round differently, so a steered score may
differ from the HF backend's by no more than STEERED_OVER_UNSTEERED x the unsteered scores'
own difference; the self-test accepts every method and refuses missing or misplaced
steering; `python -m sadi.run model.backend=vllm model.dtype=bfloat16` runs and reproduces
the HF backend's log-likelihoods within that bound."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from sadi.core.fingerprints import weights_fingerprint
from sadi.core.models import DEFAULT_MODEL, load_model, model_path
from sadi.data.tasks import load_task
from sadi.eval.harness import evaluate_split
from sadi.eval.lm import SteeredLM
from sadi.eval.metrics import NonFiniteScores
from sadi.vllm.engine import STEERED_OVER_UNSTEERED, VLLMError
from tests.helpers import loglikelihood_requests
from tests.vllm_backend.conftest import fit_steerers
from tests.vllm_backend.test_vllm_backend import METHODS, TOL

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module", params=["bfloat16", "float16"])
def half(request: pytest.FixtureRequest) -> Any:
    """The HF model and a vLLM engine in one half dtype (a lossy cast: other weights than the
    float32 model's), every method fitted on it and installed on the engine."""
    from sadi.vllm.lm import SteeredVLLMLM

    dtype = request.param
    model, tok = load_model(DEFAULT_MODEL, dtype=dtype)
    vlm = SteeredVLLMLM(
        model_path(DEFAULT_MODEL),
        weights_fingerprint(model),
        dtype=dtype,
        progress=False,
        batch_size=16,
    )
    steerers = fit_steerers(model, tok)
    for name, st in steerers.items():
        vlm.engine.install(name, st)
    yield {"dtype": dtype, "model": model, "tok": tok, "vlm": vlm, "steerers": steerers}
    del vlm


def _items() -> list[Any]:
    return load_task("copa").splits["select"][:8]


def _requests() -> list[Any]:
    return loglikelihood_requests([(it.question, ch) for it in _items() for ch in it.choices])


def _scores(lm: Any) -> torch.Tensor:
    return torch.tensor([ll for ll, _ in lm.loglikelihood(_requests())])


def test_steered_half_precision_scores_stay_within_the_backends_own_rounding(
    half: dict[str, Any],
) -> None:
    """Per method, the vLLM engine's steered scores are the HF backend's within
    STEERED_OVER_UNSTEERED x the unsteered scores' own difference. In float16 a steering can
    overflow the dtype (SmolLM2's residual stream reaches ~24000 of float16's 65504): where
    it does on the HF backend it does on vLLM too and the self-test refuses it; vLLM's kernels
    overflow on some rows where the HF backend's do not, and scoring refuses those rows
    (`NonFiniteScores`) rather than rank NaNs."""
    model, tok, vlm, steerers = half["model"], half["tok"], half["vlm"], half["steerers"]

    def hf(st: Any) -> torch.Tensor:
        return _scores(SteeredLM(model, steerer=st, tokenizer=tok, batch_size=8, progress=False))

    plain = hf(None)
    own = float((_scores(vlm.with_steerer(None)) - plain).abs().max())
    assert own > TOL  # not vacuous: half precision's rounding is above float32's tolerance
    bound = TOL + STEERED_OVER_UNSTEERED * own
    effects, overflowed = {}, {}
    for name in METHODS:
        want, got = hf(steerers[name]), _scores(vlm.with_steerer(name))
        if not bool(torch.isfinite(want).all()):  # overflowed on the HF backend: on vLLM too
            assert not bool(torch.isfinite(got).all()), name
            with pytest.raises(VLLMError, match="overflowed"):
                vlm.engine.self_test(name, steerers[name], model, tok)
            overflowed[name] = "both"
            continue
        finite = torch.isfinite(got)
        if not bool(finite.all()):  # vLLM's kernels alone overflowed: refused, not ranked
            with pytest.raises(NonFiniteScores, match="overflowed"):
                evaluate_split(vlm.with_steerer(name), _items(), task_name="half", metric="acc")
            overflowed[name] = "vllm"
        diff = (got - want).abs()[finite]
        assert float(diff.max()) <= bound, (name, half["dtype"], own)
        effects[name] = float((want - plain).abs().max())
    assert not overflowed or half["dtype"] == "float16", overflowed
    # the steering is seen above the rounding: each method moves the scores more than the
    # backends disagree, most of them more than the bound
    assert len(effects) >= len(METHODS) - 2
    assert all(e > own for e in effects.values()), (effects, own)
    assert sum(e > bound for e in effects.values()) > len(effects) / 2, (effects, bound)


def test_the_self_test_accepts_every_method_and_refuses_wrong_steering(
    half: dict[str, Any],
) -> None:
    model, tok, engine, steerers = half["model"], half["tok"], half["vlm"].engine, half["steerers"]
    unsteered = engine.self_test(None, None, model, tok)
    assert unsteered > TOL  # float32's tolerance alone would refuse every half-precision run
    for name in METHODS:
        if name == "sadi_residual" and half["dtype"] == "float16":
            continue  # overflows float16 (the test above)
        engine.self_test(name, steerers[name], model, tok)
    for vllm_side, hf_side in [("sadi_hidden", None), ("sadi_head", "sadi_hidden")]:
        # the steering missing on one side; another site's edit
        with pytest.raises(VLLMError, match="disagree on the self-test prompt"):
            st = None if hf_side is None else steerers[hf_side]
            engine.self_test(vllm_side, st, model, tok)


def _run(out: Path, backend: str) -> Path:
    cmd = [sys.executable, "-m", "sadi.run", f"model.backend={backend}"]
    cmd += ["model.dtype=bfloat16", "intervention=caa", "task.limit=10", "task.n_pairs=8"]
    cmd += ["task.splits=[select]", "logger=none", "progress=false", f"hydra.run.dir={out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_sadi_run_in_bf16_on_vllm_reproduces_the_hf_backend(tmp_path: Path) -> None:
    ours, theirs = _run(tmp_path / "vllm", "vllm"), _run(tmp_path / "hf", "hf")

    def lls(run: Path, name: str) -> torch.Tensor:
        rows = [json.loads(x) for x in (run / name).read_text().splitlines()]
        return torch.tensor([ll for r in rows for ll in r["loglikelihoods"]])

    base = "samples_copa_select_baseline.jsonl"
    own = float((lls(ours, base) - lls(theirs, base)).abs().max())
    steered = "samples_copa_select.jsonl"
    diff = float((lls(ours, steered) - lls(theirs, steered)).abs().max())
    assert diff <= TOL + STEERED_OVER_UNSTEERED * own, (diff, own)
    results = json.loads((ours / "results.json").read_text())
    assert results["config"]["model"]["dtype"] == "bfloat16"
    assert results["sweep_engine"]["reason"] == "model.backend=vllm"
