"""Each method's YAML says what its constructor says: the defaults are written once (the
constructor), the Hydra schema is generated from it, and the YAML is tested equal to it."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from sadi.pipeline.config import intervention_schema
from sadi.run import CONF_DIR
from sadi.steerers.registry import class_path, methods
from tests.test_run import compose_run

GLOBAL_DEFAULT_COMPONENT = "head"  # conf/config.yaml's component


def yaml_of(name: str) -> dict:
    return yaml.safe_load((CONF_DIR / "intervention" / f"{name}.yaml").read_text())


@pytest.mark.parametrize("name", sorted(methods()))
def test_the_yaml_of_a_method_equals_its_constructor(name: str) -> None:
    cls = methods()[name]
    data = yaml_of(name)
    assert f"base_{name}" in data["defaults"]  # the schema generated from the constructor
    assert data["_target_"] == class_path(cls) and data["name"] == name
    defaults = {
        p: v.default
        for p, v in inspect.signature(cls.__init__).parameters.items()
        if v.default is not inspect.Parameter.empty
    }
    for key, value in data.items():
        if key in ("defaults", "_target_", "name"):
            continue
        assert key in inspect.signature(cls.__init__).parameters, key
        if value != "???":  # a required value (SAS's sae) has no default to equal
            assert value == defaults[key], (name, key)
    overrides = [d for d in data["defaults"] if isinstance(d, dict)]
    component = next(
        (v for d in overrides for k, v in d.items() if "component" in k),
        GLOBAL_DEFAULT_COMPONENT,
    )
    assert component == cls.spec.default_component


@pytest.mark.parametrize("name", sorted(methods()))
def test_composing_a_method_gives_its_constructor_defaults(name: str) -> None:
    """What Hydra composes for `intervention=<name>` builds the constructor's defaults."""
    cfg = compose_run([f"intervention={name}", "paths.output_dir=/tmp/x"])
    assert cfg.component.name == methods()[name].spec.default_component
    schema = OmegaConf.structured(intervention_schema(methods()[name]))
    for key in schema:
        if key in cfg.intervention and not OmegaConf.is_missing(cfg.intervention, key):
            assert cfg.intervention[key] == schema[key], key


def test_every_intervention_yaml_names_a_registered_method_or_its_ablation() -> None:
    names = set(methods())
    for path in sorted(Path(CONF_DIR / "intervention").glob("*.yaml")):
        if path.stem == "none":
            continue
        data = yaml.safe_load(path.read_text())
        bases = {d.removeprefix("base_") for d in data["defaults"] if isinstance(d, str)}
        assert bases & names, path  # base_<method>, or <method> for an ablation
