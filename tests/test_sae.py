"""sadi.sae: SAELens' directory format (both cfg.json layouts), the three architectures'
codes against hand computations, round trips, and errors that name the file and the fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from sadi.sae import (
    CFG_FILE,
    WEIGHTS_FILE,
    SAEConfig,
    SAEFormatError,
    SparseAutoencoder,
    load_sae,
    sae_fingerprint,
    save_sae,
)
from sadi.sae.model import layer_of_hook, parse_cfg


def random_sae(
    architecture: str = "topk",
    d_in: int = 32,
    d_sae: int = 64,
    k: int = 4,
    seed: int = 0,
    layer: int | None = 1,
    apply_b_dec_to_input: bool = False,
) -> SparseAutoencoder:
    g = torch.Generator().manual_seed(seed)
    cfg = SAEConfig(
        architecture=architecture,  # type: ignore[arg-type]
        d_in=d_in,
        d_sae=d_sae,
        k=k if architecture == "topk" else None,
        apply_b_dec_to_input=apply_b_dec_to_input,
        layer=layer,
        hook_name=f"blocks.{layer}.hook_resid_post" if layer is not None else None,
    )
    threshold = torch.rand(d_sae, generator=g) * 0.5 if architecture == "jumprelu" else None
    return SparseAutoencoder(
        cfg,
        torch.randn(d_in, d_sae, generator=g) / d_in**0.5,
        torch.randn(d_sae, generator=g) * 0.1,
        torch.randn(d_sae, d_in, generator=g) / d_sae**0.5,
        torch.randn(d_in, generator=g) * 0.1,
        threshold=threshold,
    )


@pytest.mark.parametrize("architecture", ["standard", "jumprelu", "topk"])
@pytest.mark.parametrize("apply_b_dec", [False, True])
def test_codes_equal_a_hand_computation(architecture: str, apply_b_dec: bool) -> None:
    sae = random_sae(architecture, apply_b_dec_to_input=apply_b_dec)
    x = torch.randn(5, 32, generator=torch.Generator().manual_seed(1))
    z = sae.encode(x)
    for row in range(5):
        xin = x[row] - sae.b_dec if apply_b_dec else x[row]
        pre = [
            float(sum(xin[i] * sae.W_enc[i, c] for i in range(32)) + sae.b_enc[c])
            for c in range(64)
        ]
        if architecture == "standard":
            want = [max(p, 0.0) for p in pre]
        elif architecture == "jumprelu":
            want = [
                p if p > float(sae.threshold[c]) and p > 0 else 0.0  # type: ignore[index]
                for c, p in enumerate(pre)
            ]
        else:
            top = sorted(range(64), key=lambda c: -pre[c])[:4]
            want = [max(pre[c], 0.0) if c in top else 0.0 for c in range(64)]
        assert z[row].tolist() == pytest.approx(want, abs=1e-5)
    if architecture == "topk":
        assert bool(((z != 0).sum(-1) <= 4).all())
    torch.testing.assert_close(sae.decode(z), z @ sae.W_dec + sae.b_dec)
    torch.testing.assert_close(sae(x), sae.decode(z))


@pytest.mark.parametrize("architecture", ["standard", "jumprelu", "topk"])
def test_save_load_round_trip_is_exact(tmp_path: Path, architecture: str) -> None:
    sae = random_sae(architecture)
    loaded = load_sae(save_sae(sae, tmp_path / "sae"))
    assert loaded.cfg == sae.cfg
    assert sae_fingerprint(loaded) == sae_fingerprint(sae)
    x = torch.randn(3, 32)
    assert torch.equal(loaded.encode(x), sae.encode(x))
    written = json.loads((tmp_path / "sae" / CFG_FILE).read_text())
    assert written["architecture"] == architecture and written["d_sae"] == 64


def write_dir(path: Path, cfg: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    path.mkdir(parents=True)
    (path / CFG_FILE).write_text(json.dumps(cfg))
    save_file(tensors, str(path / WEIGHTS_FILE))
    return path


def weights(d_in: int = 8, d_sae: int = 16, threshold: bool = False) -> dict[str, torch.Tensor]:
    out = {
        "W_enc": torch.randn(d_in, d_sae),
        "b_enc": torch.zeros(d_sae),
        "W_dec": torch.randn(d_sae, d_in),
        "b_dec": torch.zeros(d_in),
    }
    if threshold:
        out["threshold"] = torch.full((d_sae,), 0.1)
    return out


def test_reads_saelens_v6_and_older_cfg_layouts(tmp_path: Path) -> None:
    v6 = {
        "architecture": "jumprelu",
        "d_in": 8,
        "d_sae": 16,
        "dtype": "float32",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "metadata": {"hook_name": "blocks.12.hook_resid_post", "model_name": "gemma-3-270m"},
    }
    sae = load_sae(write_dir(tmp_path / "v6", v6, weights(threshold=True)))
    assert (sae.cfg.architecture, sae.cfg.layer, sae.cfg.model_name) == (
        "jumprelu",
        12,
        "gemma-3-270m",
    )
    old = {
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 3},
        "d_in": 8,
        "d_sae": 16,
        "hook_name": "model.layers.7",
        "apply_b_dec_to_input": True,
        "context_size": 128,
    }
    sae = load_sae(write_dir(tmp_path / "old", old, weights()))
    assert (sae.cfg.architecture, sae.cfg.k, sae.cfg.layer) == ("topk", 3, 7)
    assert sae.cfg.apply_b_dec_to_input and sae.cfg.extra["context_size"] == 128
    again = load_sae(save_sae(sae, tmp_path / "again"))  # unknown fields survive a round trip
    assert again.cfg.extra["context_size"] == 128 and again.cfg.k == 3


@pytest.mark.parametrize(
    "hook, layer",
    [("blocks.3.hook_resid_post", 3), ("model.layers.11", 11), ("blocks.3.hook_resid_pre", None)],
)
def test_layer_of_hook(hook: str, layer: int | None) -> None:
    assert layer_of_hook(hook) == layer


@pytest.mark.parametrize(
    "change, message",
    [
        ({"architecture": "gated"}, "architecture 'gated' is not supported"),
        ({"normalize_activations": "expected_average_only_in"}, "normalisation constants"),
        ({"architecture": "topk", "k": 0}, "needs 1 <= k <= d_sae=16"),
        ({"d_sae": -1}, "d_sae must be a positive integer"),
    ],
)
def test_bad_configs_name_the_file_and_the_fix(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    cfg = {"architecture": "standard", "d_in": 8, "d_sae": 16, **change}
    path = write_dir(tmp_path / "bad", cfg, weights())
    with pytest.raises(SAEFormatError, match=message) as info:
        load_sae(path)
    assert str(info.value).startswith(str(path / CFG_FILE))


def test_bad_weights_and_missing_files(tmp_path: Path) -> None:
    cfg = {"architecture": "jumprelu", "d_in": 8, "d_sae": 16}
    with pytest.raises(SAEFormatError, match=r"missing tensors \['threshold'\]"):
        load_sae(write_dir(tmp_path / "a", cfg, weights()))
    w = weights(threshold=True)
    w["W_dec"] = torch.randn(16, 9)
    with pytest.raises(SAEFormatError, match=r"'W_dec' has shape \[16, 9\], expected \[16, 8\]"):
        load_sae(write_dir(tmp_path / "b", cfg, w))
    with pytest.raises(FileNotFoundError, match="no cfg.json in .* SAELens' format"):
        load_sae(tmp_path / "nothing")
    broken = write_dir(tmp_path / "c", cfg, weights(threshold=True))
    (broken / WEIGHTS_FILE).write_bytes(b"not safetensors")
    with pytest.raises(SAEFormatError, match="not a readable safetensors file"):
        load_sae(broken)


def test_parse_cfg_refuses_a_non_object() -> None:
    with pytest.raises(SAEFormatError, match="must be a JSON object"):
        parse_cfg([1, 2], "x.json")  # type: ignore[arg-type]


def test_from_pretrained_without_saelens_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from sadi.sae import from_pretrained

    monkeypatch.setitem(sys.modules, "sae_lens", None)  # an import of it fails
    with pytest.raises(ImportError, match="pip install sae-lens"):
        from_pretrained("gemma-scope-2-270m-pt-res", "layer_12_width_16k_l0_medium")


def test_from_pretrained_converts_what_saelens_returns(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub path without the hub: a stand-in `sae_lens.SAE.from_pretrained` returns what
    SAELens 6 returns (an SAE object with `cfg.to_dict()` and `state_dict()`); the result
    encodes as the SAE those tensors and that cfg describe."""
    import sys
    import types

    ref = random_sae("jumprelu", d_in=8, d_sae=16, layer=None)
    v6 = {
        "architecture": "jumprelu",
        "d_in": 8,
        "d_sae": 16,
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "metadata": {"hook_name": "blocks.12.hook_resid_post", "model_name": "gemma-3-270m"},
    }
    calls = []

    class FakeSAE:
        cfg = types.SimpleNamespace(to_dict=lambda: v6)

        def state_dict(self) -> dict[str, torch.Tensor]:
            return ref.tensors()

        @classmethod
        def from_pretrained(cls, release: str, sae_id: str, device: str) -> FakeSAE:
            calls.append((release, sae_id, device))
            return cls()

    module = types.ModuleType("sae_lens")
    module.SAE = FakeSAE  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sae_lens", module)
    from sadi.sae import from_pretrained

    sae = from_pretrained("gemma-scope-2-270m-pt-res", "layer_12_width_16k_l0_medium")
    assert calls == [("gemma-scope-2-270m-pt-res", "layer_12_width_16k_l0_medium", "cpu")]
    assert sae.cfg.layer == 12 and sae.cfg.architecture == "jumprelu"
    x = torch.randn(5, 8)
    assert torch.equal(sae.encode(x), ref.encode(x))
