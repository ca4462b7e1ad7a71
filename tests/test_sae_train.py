"""sadi.sae.train: fit-split text only, truncated collection that skips the first positions,
outlier exclusion, the TopK trainer on synthetic sparse data, the cache and the CLI."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sadi.core.architectures import decoder_layers
from sadi.data.tasks import load_task
from sadi.sae import load_sae
from sadi.sae.train import (
    FEATURES_FILE,
    TopKTrainer,
    TrainConfig,
    cached_activations,
    collect_activations,
    exclude_outliers,
    fit_split_texts,
    quality,
    train_sae,
    train_topk,
)
from tests.conftest import byte_tokenizer, make_tiny


def test_text_comes_from_fit_splits_only() -> None:
    texts = fit_split_texts(["copa"])
    task = load_task("copa")
    assert len(texts) == len(task.splits["fit"])
    select = {
        it.question + it.choices[it.label] for s in ("select", "report") for it in task.splits[s]
    }
    assert not set(texts) & select


def test_collection_skips_first_positions_and_stops_after_the_layer() -> None:
    model = make_tiny("llama")
    tok = byte_tokenizer()
    texts = ["The sky is blue", "Hi", "Water is wet and cold"]
    after: list[int] = []
    handle = decoder_layers(model)[2].register_forward_hook(lambda *a: after.append(1))
    try:
        x, owner, position = collect_activations(
            model,
            tok,
            texts,
            1,
            max_tokens=10_000,
            skip_first=1,
            dtype=torch.float32,
            progress=False,
        )
    finally:
        handle.remove()
    assert not after  # nothing after the read layer ran
    lengths = [len(tok(t)["input_ids"]) - 1 for t in texts]
    assert len(x) == sum(lengths) and sorted(owner.tolist()) == sorted(
        i for i, n in enumerate(lengths) for _ in range(n)
    )
    # the same activations as a full forward, at positions 1.. of each text
    seen = {}
    h = decoder_layers(model)[1].register_forward_hook(
        lambda m, a, out: seen.__setitem__("x", (out[0] if isinstance(out, tuple) else out))
    )
    try:
        with torch.no_grad():
            model(**tok([texts[2]], return_tensors="pt"))
    finally:
        h.remove()
    torch.testing.assert_close(x[owner == 2], seen["x"][0, 1:], atol=1e-5, rtol=1e-5)
    # positions index each text's tokens: 1..len-1 (position 0 skipped)
    for i, n in enumerate(lengths):
        assert sorted(position[owner == i].tolist()) == list(range(1, n + 1))


def test_outliers_are_excluded_by_norm() -> None:
    x = torch.ones(100, 4)
    x[7] *= 50
    keep = exclude_outliers(x, 10.0)
    assert keep.sum() == 99 and not keep[7]


def test_trainer_recovers_a_sparse_dictionary() -> None:
    """On data made of 4 of 128 unit directions in 64 dimensions, the trained TopK SAE
    explains far more variance on held-apart rows than the same SAE untrained."""
    g = torch.Generator().manual_seed(0)
    dictionary = torch.randn(128, 64, generator=g)
    dictionary /= dictionary.norm(dim=1, keepdim=True)
    idx = torch.stack([torch.randperm(128, generator=g)[:4] for _ in range(20_000)])
    coef = torch.rand(20_000, 4, generator=g) * 2 + 0.5
    x = (coef[..., None] * dictionary[idx]).sum(1)
    cfg = TrainConfig(
        layer=0,
        expansion=2,
        k=4,
        tokens=20_000,
        epochs=8,
        batch_tokens=256,
        lr=3e-3,
        dead_tokens=5_000,
    )
    trainer, log = train_topk(x[:18_000], cfg, progress=False)
    figures = quality(trainer.to_sae(0, None, {}), x[18_000:])
    untrained = quality(TopKTrainer(64, 128, 4).to_sae(0, None, {}), x[18_000:])
    assert figures["variance_explained"] > 0.93, figures
    assert figures["variance_explained"] > untrained["variance_explained"] + 0.1
    assert figures["l0"] <= 4 and figures["dead_fraction"] < 0.05
    assert log["log"][-1]["nmse"] < log["log"][0]["nmse"]


# a small SAE of the tiny Llama's layer 1, trained on COPA's fit split in seconds
TINY_SAE = TrainConfig(
    layer=1,
    expansion=2,
    k=4,
    tokens=2000,
    epochs=1,
    batch_tokens=256,
    tasks=("copa",),
    collect_dtype="float32",
)


def test_train_sae_caches_by_weights_and_config(tmp_path: Path) -> None:
    model, tok = make_tiny("llama"), byte_tokenizer()
    cfg = TINY_SAE
    sae, entry, figures = train_sae(model, tok, cfg, cache_dir=tmp_path, progress=False)
    assert (entry / "cfg.json").exists() and (entry / "quality.json").exists()
    assert sae.cfg.layer == 1 and sae.cfg.k == 4 and sae.d_sae == 64
    for key in (
        "held_out_variance_explained",
        "held_out_l0",
        "held_out_dead_fraction",
        "outliers_excluded",
        "tokens_trained",
        "timings_s",
    ):
        assert key in figures
    assert figures["held_out_l0"] <= 4 and figures["tokens_held_out"] > 0
    again = train_sae(model, tok, cfg, cache_dir=tmp_path, progress=False)
    assert again[1] == entry  # a cache hit
    other = make_tiny("llama", seed=1)
    assert train_sae(other, tok, cfg, cache_dir=tmp_path, progress=False)[1] != entry
    assert torch.equal(load_sae(entry).W_enc, sae.W_enc)
    # another SAE of the same layer reuses the collected activations
    wider = dataclasses.replace(cfg, expansion=4)
    _, wide_entry, wide_figures = train_sae(model, tok, wider, cache_dir=tmp_path, progress=False)
    assert wide_entry != entry and wide_figures["activations_cached"]
    assert not figures["activations_cached"]
    assert wide_figures["timings_s"]["collect_s"] == figures["timings_s"]["collect_s"]


def test_feature_examples_are_each_latents_top_tokens(tmp_path: Path) -> None:
    model = make_tiny("llama")
    tok = byte_tokenizer()
    cfg = TINY_SAE
    sae, entry, _ = train_sae(model, tok, cfg, cache_dir=tmp_path, progress=False)
    examples = json.loads((entry / FEATURES_FILE).read_text())
    texts = fit_split_texts(cfg.tasks)
    x, owner, position, _ = cached_activations(model, tok, texts, cfg, cache_dir=tmp_path)
    z = sae.encode(x)
    fired = 0
    for c, rows in examples["latents"].items():
        col = z[:, int(c)]
        values = [r["value"] for r in rows]
        assert values == sorted(values, reverse=True) and len(rows) <= examples["top"]
        fired += bool(rows)
        for row in rows:  # each row is this latent's code at the named token
            ids = list(tok(texts[row["text"]])["input_ids"])[: cfg.max_text_tokens]
            cells = (owner == row["text"]).nonzero().flatten()
            match = [int(j) for j in cells if abs(float(col[j]) - row["value"]) < 1e-5]
            assert match
            p = int(position[match[0]])
            assert row["token"] == tok.decode(ids[p : p + 1])
            assert row["context"] == tok.decode(ids[max(0, p - examples["before"]) : p])
        if rows:  # nothing among the training tokens is larger than the first (held-apart
            # texts may be: they are not training text)
            assert float(col.max()) >= rows[0]["value"] - 1e-6
    assert fired > 0


def test_layer_out_of_range_and_bad_values() -> None:
    with pytest.raises(ValueError, match="bad SAE training values"):
        TrainConfig(layer=1, k=0)
    with pytest.raises(ValueError, match="layer=7 is out of range"):
        train_sae(make_tiny("llama"), byte_tokenizer(), TrainConfig(layer=7), cache_dir="/tmp/x")


def test_cli_trains_and_prints_the_directory(tiny_model_dir: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sadi.sae",
            "train",
            f"model={tiny_model_dir}",
            "layer=1",
            "k=4",
            "expansion=2",
            "tokens=2000",
            "epochs=1",
            "tasks=copa",
            "collect_dtype=float32",
            f"cache_dir={tmp_path}",
            "progress=false",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "intervention=sas intervention.sae=" in proc.stdout
    directory = Path(proc.stdout.split("SAE: ")[1].split("\n")[0])
    assert json.loads((directory / "cfg.json").read_text())["k"] == 4
    bad = subprocess.run(
        [sys.executable, "-m", "sadi.sae", "train", "kk=3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0 and "unknown keys ['kk']" in bad.stderr
