"""An SAE carried inside another artifact (a saved SAS steerer): its tensors under a name
prefix, and back, checked against the fingerprint the artifact records."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from sadi.sae.model import SAEConfig, SparseAutoencoder, parse_cfg, sae_fingerprint

PREFIX = "sae."


def tensor_names(cfg: SAEConfig) -> list[str]:
    """The prefixed tensor names an SAE of `cfg` is carried under."""
    names = ["W_enc", "b_enc", "W_dec", "b_dec"] + (
        ["threshold"] if cfg.architecture == "jumprelu" else []
    )
    return [PREFIX + n for n in names]


def pack(sae: SparseAutoencoder) -> dict[str, Tensor]:
    """The SAE's tensors, prefixed."""
    return {PREFIX + k: v for k, v in sae.tensors().items()}


def unpack(
    tensors: dict[str, Tensor], cfg: SAEConfig, expected: str | None = None
) -> SparseAutoencoder:
    """The SAE in `tensors` (the prefixed ones; others are ignored), checked against the
    `expected` fingerprint when given; raises ValueError when they do not belong together."""
    t = {k[len(PREFIX) :]: v for k, v in tensors.items() if k.startswith(PREFIX)}
    sae = SparseAutoencoder(
        cfg, t["W_enc"], t["b_enc"], t["W_dec"], t["b_dec"], threshold=t.get("threshold")
    )
    if expected is not None and sae_fingerprint(sae) != expected:
        raise ValueError(
            f"the SAE tensors have fingerprint {sae_fingerprint(sae)}, but steerer.json "
            f"records {expected}: the files do not belong together; re-save the steerer"
        )
    return sae


def metadata(sae: SparseAutoencoder) -> dict[str, Any]:
    """What the carrying artifact's JSON records of the SAE: its config and fingerprint."""
    return {"sae_cfg": sae.cfg.to_json(), "sae_fingerprint": sae_fingerprint(sae)}


def read_metadata(meta: dict[str, Any]) -> tuple[SAEConfig, str]:
    """(config, fingerprint) back from `metadata`'s keys in `meta`; ValueError if absent."""
    if "sae_cfg" not in meta or "sae_fingerprint" not in meta:
        raise ValueError(
            "no 'sae_cfg' / 'sae_fingerprint': a SAS steerer records its SAE; re-save it"
        )
    return parse_cfg(meta["sae_cfg"], "'sae_cfg'"), str(meta["sae_fingerprint"])


__all__ = ["PREFIX", "metadata", "pack", "read_metadata", "tensor_names", "unpack"]
