"""model.backend: what is refused before any model loads (here, without vLLM), and which
steerers the vLLM backend cannot run and why (`sadi.vllm.sites.refusal`)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from sadi.pipeline.validate import ConfigError
from sadi.run import run
from sadi.steerers.caa import CAA
from sadi.steerers.lora import LoRA
from sadi.steerers.sadi import SADI
from sadi.vllm.sites import VLLM_ARCHITECTURES, refusal, vllm_architecture
from tests.test_run import compose_run, tiny_overrides
from tests.test_validate import NO_MODEL


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["model.backend=tgi"], r"model.backend='tgi': choose one of \['hf', 'vllm'\]"),
        (
            ["model.backend=vllm", "intervention.mode=faithful"],
            r"cannot run intervention=sadi: .*use intervention.mode=online",
        ),
        (["model.backend=vllm", "sweep.engine=true"], r"sweep.engine=true with model.backend"),
    ],
)
def test_refused_before_anything_loads(tmp_path: Path, overrides: list[str], match: str) -> None:
    cfg = compose_run(tiny_overrides(NO_MODEL, tmp_path / "run", *overrides))
    with pytest.raises(ConfigError, match=match):
        run(cfg)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_without_vllm_the_run_says_how_to_get_it(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sadi.run",
            "model.backend=vllm",
            "intervention=caa",
            f"hydra.run.dir={tmp_path / 'run'}",
            "logger=none",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "make setup-vllm" in proc.stderr and "Traceback" not in proc.stderr


def test_which_steerers_vllm_refuses() -> None:
    assert refusal(CAA(progress=False)) is None  # known without fitting
    assert refusal(SADI(k=4, progress=False)) is None  # online
    why = refusal(SADI(k=4, mode="faithful", progress=False))
    assert why is not None and "mode=online" in why
    why = refusal(LoRA(progress=False))
    assert why is not None and "vLLM's own LoRA" in why
    assert refusal(SADI(k=4, mode="faithful", variant="fixed", progress=False)) is None


def test_vllm_architectures_are_data_and_unknown_ones_are_named() -> None:
    assert {"llama", "mistral", "qwen2", "qwen3"} <= set(VLLM_ARCHITECTURES)
    for arch in VLLM_ARCHITECTURES.values():
        assert set(arch.sites) == {"head", "neuron", "neuron_down", "hidden", "residual"}
    with pytest.raises(ValueError, match=r"does not steer the 'gpt2' family yet.*supported"):
        vllm_architecture("gpt2")


def test_caches_are_keyed_on_the_backend_and_what_changes_its_numbers(tmp_path: Path) -> None:
    from sadi.pipeline.backend import cache_fields

    hf = compose_run(tiny_overrides(NO_MODEL, tmp_path / "run"))
    assert cache_fields(hf) == {}
    vllm = compose_run(
        tiny_overrides(
            NO_MODEL, tmp_path / "run", "model.backend=vllm", "model.vllm.max_model_len=512"
        )
    )
    fields = cache_fields(vllm)
    assert fields["backend"] == "vllm" and fields["max_model_len"] == 512
    assert "tensor_parallel_size" in fields
