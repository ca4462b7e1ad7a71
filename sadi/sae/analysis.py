"""What a steering vector in an SAE's latent space means: its largest latents, with the
training tokens that activate each most (from the `features.json` sadi writes beside an SAE
it trains)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sadi.sae.model import FEATURES_FILE


def feature_examples(sae_dir: Path | None) -> dict[str, list[dict[str, Any]]] | None:
    """Each latent's top-activating training tokens, from `sae_dir/features.json` (None when
    there is none, e.g. an SAE from the hub, or no SAE directory at hand)."""
    path = sae_dir / FEATURES_FILE if sae_dir is not None else None
    if path is None or not path.is_file():
        return None
    latents: dict[str, list[dict[str, Any]]] = json.loads(path.read_text())["latents"]
    return latents


def top_features(
    s: Tensor,
    stats: dict[str, Tensor],
    examples: dict[str, list[dict[str, Any]]] | None,
    n: int = 20,
    per_latent: int = 5,
) -> list[dict[str, Any]]:
    """The `n` latents with the largest |s| (ties: lower index first): s, the side
    ("positive": seen only with the behaviour), the per-side statistics in `stats`
    ([d_sae] tensors by name) and up to `per_latent` top-activating training tokens (None
    when unknown)."""
    order = [c for c in torch.argsort(-s.abs(), stable=True).tolist() if s[c] != 0][:n]
    return [
        {
            "latent": c,
            "s": float(s[c]),
            "side": "positive" if s[c] > 0 else "negative",
            **{name: float(values[c]) for name, values in stats.items()},
            "examples": None if examples is None else examples.get(str(c), [])[:per_latent],
        }
        for c in order
    ]


def features_file(
    s: Tensor,
    tau: float,
    features: list[dict[str, Any]],
    examples_from: Path | None,
) -> dict[str, Any]:
    """The body of a steerer's `features.json`: counts of s and its top features."""
    return {
        "tau": tau,
        "n_nonzero": int((s != 0).sum()),
        "n_positive": int((s > 0).sum()),
        "n_negative": int((s < 0).sum()),
        "examples_from": None if examples_from is None else str(examples_from),
        "features": features,
    }


__all__ = ["feature_examples", "features_file", "top_features"]
