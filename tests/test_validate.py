"""Bad run config values fail with one clear message before the model (or data) loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sadi.pipeline.validate import ConfigError, check_batch_size, check_optimized_metric
from sadi.run import run
from tests.test_run import compose_run, tiny_overrides

# a model source that does not exist: a check that ran after loading would fail on it instead
NO_MODEL = Path("/nonexistent/model/dir")


@pytest.mark.parametrize(
    "override, match",
    [
        ("intervention.k=0", r"intervention=sadi: k must be .*got 0"),
        ("intervention.strength=nan", r"intervention=sadi: strength must be a finite number"),
        ("intervention.mode=fast", r"intervention=sadi: mode must be .*'fast'"),
        ("optimized_metric=report/acc", r"must read the select split.*select/acc"),
        (
            "optimized_metric=select/f1",
            r"this task reports \['acc', 'acc_norm', 'p_label'\], not 'f1'",
        ),
        ("task.splits=[test]", r"'test' is not a split.*task.splits=\[select,report\]"),
        ("model.batch_size=0", r"model.batch_size=0 is not a batch size.*'auto'"),
        ("model.batch_size=lots", r"model.batch_size='lots'"),
        ("model.dtype=fp8", r"model.dtype: unknown dtype 'fp8'"),
        ("+intervention.kk=3", r"intervention.kk is not a parameter of SADI.*'k'.*'strength'"),
        ("task.limit=0", r"task.limit=0 must be a positive number"),
    ],
)
def test_bad_values_fail_before_anything_loads(tmp_path: Path, override: str, match: str) -> None:
    cfg = compose_run(tiny_overrides(NO_MODEL, tmp_path / "run", override))
    with pytest.raises(ConfigError, match=match):
        run(cfg)
    assert not (tmp_path / "run").exists(), "nothing is written for a config that cannot run"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it(tmp_path: Path) -> None:
    cfg = compose_run(tiny_overrides(NO_MODEL, tmp_path / "run", "model.device=cuda"))
    with pytest.raises(ConfigError, match=r"model.device='cuda' but this machine has no CUDA"):
        run(cfg)


def test_an_explicit_wrong_component_is_refused_before_loading(tmp_path: Path) -> None:
    overrides = [o for o in tiny_overrides(NO_MODEL, tmp_path / "r") if "intervention." not in o]
    cfg = compose_run([*overrides, "intervention=caa", "component=head"])
    with pytest.raises(ConfigError, match=r"CAA steers \['residual'\], got component='head'; set"):
        run(cfg)


@pytest.mark.parametrize(
    "intervention, component", [("caa", "residual"), ("iti", "head"), ("austeer", "head")]
)
def test_the_intervention_chooses_its_component_by_default(
    intervention: str, component: str
) -> None:
    cfg = compose_run([f"intervention={intervention}", "paths.output_dir=/tmp/x"])
    assert cfg.component.name == component
    assert compose_run(["intervention=sadi", "paths.output_dir=/tmp/x"]).component.name == "head"


def test_batch_sizes_and_metrics_that_are_fine() -> None:
    for ok in (1, 16, "auto", "auto:4", "8"):
        check_batch_size(ok)
    assert check_optimized_metric("select/acc_norm", "acc") == ("select", "acc_norm")
    assert check_optimized_metric("select/mc2", "mc2") == ("select", "mc2")


def test_sas_without_an_sae_is_refused_before_loading(tmp_path: Path) -> None:
    overrides = [o for o in tiny_overrides(NO_MODEL, tmp_path / "r") if "intervention." not in o]
    cfg = compose_run([*overrides, "intervention=sas"])
    assert cfg.component.name == "residual"
    with pytest.raises(ConfigError, match=r"intervention=sas needs intervention.sae=<an SAE dir"):
        run(cfg)
