"""A new method is one module and one YAML: a throw-away method, written here into a
temporary directory (touching no file of the project), runs, sweeps (on the engine's shared
prefixes), is selected, reported and drawn as a curve, all from what it declares in its
`spec`. This is the recipe of docs/extending.md, followed to the letter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import tiny_run

# The whole method: the mean difference of one layer's residual stream between positive
# and negative completions, added `scale` times at the last prompt token.
MODULE = '''
"""Throwaway: `scale` x the mean residual difference of one layer, at the last prompt token."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from sadi.core.activations import read_pair_activations
from sadi.infra import checks
from sadi.steerers.base import EditFn, Steerer, check_pairs
from sadi.steerers.spec import MethodSpec


@dataclass
class ThrowawayState:
    vectors: Tensor  # [layers, d_model]


class Throwaway(Steerer[ThrowawayState]):
    spec = MethodSpec(
        name="throwaway",
        strength="scale",
        identity=0.0,
        axes=("layer", "scale"),
        apply_params=("layer", "scale"),
        components=("residual",),
        default_component="residual",
    )

    def __init__(
        self,
        component: str = "residual",
        layer: int = 1,
        scale: float = 1.0,
        batch_size: int = 16,
        progress: bool = True,
    ) -> None:
        super().__init__(component, batch_size, progress)
        self.layer = checks.integer("layer", layer, minimum=0)
        self.scale = checks.finite("scale", scale)

    def fit(self, model, tokenizer, pairs):  # type: ignore[no-untyped-def]
        check_pairs(pairs)
        shape = self._remember_model(model, len(pairs))
        pos, neg = read_pair_activations(model, tokenizer, pairs, "residual", shape, progress=False)
        self.state = ThrowawayState(vectors=(pos - neg).mean(dim=0))
        return self

    def selected_layers(self) -> list[int]:
        return [self.layer]

    def _edit_fns(self, model) -> dict[int, EditFn]:  # type: ignore[no-untyped-def]
        if self.scale == 0.0:
            return {}
        delta = self.scale * self.fitted_state().vectors[self.layer]

        def edit(layer: int, act: Tensor, rows: Tensor, pos: Tensor) -> Tensor:
            return act.index_put((rows, pos), act[rows, pos] + delta.to(act.dtype))

        return {self.layer: edit}
'''
YAML = """# Throwaway: scale x the mean residual difference of one layer, at the last prompt token.
defaults:
  - override /component@_global_.component: residual
  - _self_

_target_: throwaway.Throwaway
name: throwaway
layer: 1
scale: 1.0
"""


def sadi(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=900, env=env, cwd=cwd
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_a_method_is_one_module_and_one_yaml(tiny_model_dir: Path, tmp_path: Path) -> None:
    code, conf = tmp_path / "code", tmp_path / "conf" / "intervention"
    code.mkdir()
    conf.mkdir(parents=True)
    (code / "throwaway.py").write_text(MODULE)
    (conf / "throwaway.yaml").write_text(YAML)
    repo = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(code), str(repo)]),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    sweep = tmp_path / "sweep"
    common = [
        f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
        *tiny_run(tiny_model_dir),
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]
    # run: a sweep over the method's strength, scored on the engine's shared prefixes
    sadi(
        [
            "-m",
            "sadi.run",
            "-m",
            *common,
            "intervention=throwaway",
            "intervention.scale=-2.0,2.0,4.0",
            f"hydra.sweep.dir={sweep}",
        ],
        env,
        tmp_path,
    )
    points = sorted(sweep.glob("*/results.json"))
    assert len(points) == 3
    results = [json.loads(p.read_text()) for p in points]
    for r in results:
        assert r["method"]["name"] == "throwaway" and r["method"]["strength"] == "scale"
        assert r["config"]["component"]["name"] == "residual"  # its declared default
        assert r["sweep_engine"]["used"] and r["sweep_engine"]["points"] == 3  # one fit
    assert len({r["sweep_engine"]["directory"] for r in results}) == 1

    # select: on the select split, ties broken by the spec's strength; report scored once
    sadi(["-m", "sadi.select", str(sweep), "--logger", "none"], env, tmp_path)
    (selection,) = sweep.glob("selected/*/selection.json")
    chosen = json.loads(selection.read_text())
    assert chosen["chosen"]["params"]["name"] == "throwaway" and chosen["n_points"] == 3
    best = max(r["metrics"]["select"]["acc"] for r in results)
    assert chosen["chosen"]["select"]["acc"] == best
    tied = [r for r in results if r["metrics"]["select"]["acc"] == best]
    weakest = min(abs(r["config"]["intervention"]["scale"]) for r in tied)  # spec.identity 0
    assert abs(chosen["chosen"]["params"]["scale"]) == weakest
    assert {"acc", "p_label"} <= set(chosen["report"]["metrics"])

    # report: the method's rows, its strength axis and params from its spec
    out = tmp_path / "report"
    printed = sadi(["-m", "sadi.report", str(sweep), "--out", str(out)], env, tmp_path).stdout
    row = next(line for line in printed.splitlines() if "| throwaway-residual |" in line)
    assert "layer=1, scale=" in row
    assert any(p.name.startswith("strength_") for p in out.glob("*.png"))

    # curves: the strength axis and the identity (scale 0: the unsteered model) from the spec
    curves = tmp_path / "curves"
    sadi(["-m", "sadi.report.curves", str(sweep), "--out", str(curves)], env, tmp_path)
    (curve,) = json.loads((curves / "curves.json").read_text())
    assert curve["param"] == "scale" and curve["identity"] == 0.0
    assert [p["strength"] for p in curve["points"]] == [-2.0, 0.0, 2.0, 4.0]
