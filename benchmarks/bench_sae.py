"""sae: the default embedded SAE (SmolLM2-135M-Instruct, layer 15 of 30, d_sae = 8 x 576,
k = 32), trained offline on the task fit splits, against its quality and cost targets.

Figures (from the SAE's `quality.json`, written by `sadi.sae.train.train_sae`, measured on
the held-apart texts, never trained on): variance explained >= 0.8, dead latents < 1%,
L0 = k; and the end-to-end time (reading activations + training) <= 600 s on 2 cores.
The time target is absolute, as the issue states it, not a side-by-side ratio; the JSON
also gives tokens per second per stage.

`run(cache_dir=None)` trains in a fresh temporary cache; a `cache_dir` holding the SAE
already (e.g. from `python -m sadi.sae train model=smollm2_135m layer=15`) reports that
training's figures instead (`cache_hit` says so), and one holding only the layer's collected
activations trains on them, reporting the collection's seconds as measured when it ran
(`figures.activations_cached`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import environment, load_default_model, loadavg, write_result
from sadi.sae.train import TrainConfig, train_sae

NAME = "sae"
LAYER = 15
TARGETS = {"variance_explained": 0.8, "dead_fraction": 0.01, "total_s": 600.0}


def run(
    repeats: int | None = None,
    cache_dir: str | Path | None = None,
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """Train (or read) the default SAE; write `<out_dir>/sae.json` and return its content."""
    del repeats  # one training run: its figures are the measurement
    model, tok = load_default_model()
    cfg = TrainConfig(layer=LAYER)
    env = environment()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(cache_dir) if cache_dir is not None else Path(tmp)
        before = set((root / "saes").glob("*")) if (root / "saes").exists() else set()
        _, entry, figures = train_sae(model, tok, cfg, cache_dir=root, progress=False)
        hit = entry in before
    timings = figures["timings_s"]
    checks = {
        "variance_explained": figures["held_out_variance_explained"]
        >= TARGETS["variance_explained"],
        "dead_fraction": figures["held_out_dead_fraction"] < TARGETS["dead_fraction"],
        "l0_equals_k": abs(figures["held_out_l0"] - cfg.k) < 1e-6,
        "total_s": timings["total_s"] <= TARGETS["total_s"],
    }
    result: dict[str, Any] = {
        "benchmark": NAME,
        "description": (
            f"TopK SAE of SmolLM2 layer {LAYER}: d_sae {cfg.expansion} x d_model, k {cfg.k}, "
            f"{cfg.epochs} epochs over the task fit splits' tokens (at most {cfg.tokens})"
        ),
        **env,
        "loadavg_at_end": loadavg(),
        "repeats": 1,
        "cache_hit": hit,
        "sae_dir_name": entry.name,
        "figures": {k: v for k, v in figures.items() if k != "training"},
        "tokens_per_s": {
            "collect": figures["tokens_collected"] / timings["collect_s"],
            "train": figures["tokens_trained"] * cfg.epochs / timings["train_s"],
        },
        "targets": {**TARGETS, "l0": cfg.k},
        "checks": checks,
        "meets_target": all(checks.values()),
    }
    write_result(NAME, result, out_dir)
    return result


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(cache_dir=sys.argv[1] if len(sys.argv) > 1 else None), indent=2))
