"""Training a TopK SAE offline on one decoder layer's output (the residual stream): the
configuration, the cache key, and `train_sae`, which collects (`sadi.sae.activations`),
trains (`sadi.sae.trainer`), measures and caches it with each latent's top examples.

Text: only what every machine has offline, the fit splits of the registered tasks (each
item's context followed by its correct continuation); never a select or report split.
Activations: the model is run only up to the read layer (a forward stops after it), in
`collect_dtype` ("auto": bfloat16 where it is native, on CUDA and avx512_bf16 / amx_bf16
CPUs; float32 elsewhere, since on an AVX2-only CPU bf16 runs ~5x slower than float32).
Excluded tokens: the first `skip_first` positions of every text (the attention sink: on
SmolLM2 ~0.03% of tokens carry norms up to 150x the median and most of the variance) and any
token whose norm exceeds
`outlier_factor` x the median norm; both counts are reported. A `held_out` fraction of the
texts (whole texts, not tokens) is kept apart for the quality figures.

Trainer: TopK (Gao et al. 2024): z = TopK(ReLU-free pre-activation) with ReLU on the kept
values, x_hat = z @ W_dec + b_dec, loss = ||x - x_hat||^2 / ||x - mean||^2 (normalised MSE)
plus the AuxK loss (the dead latents' top `aux_k` reconstruct the residual, weight
`aux_coef`); decoder rows renormalised to unit norm after every step; Adam, learning rate
decayed linearly to 0 over the last 20% of the steps; W_enc initialised as W_dec^T and b_dec
as the mean activation. The decoder side is sparse (`embedding_bag` over the k active rows).

Quality figures (`quality.json` beside the SAE): variance explained and L0 on the held-apart
tokens, the fraction of latents that never fire on them (dead), tokens seen, time per stage.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from sadi.core.architectures import decoder_layers, model_shape, weights_fingerprint
from sadi.core.models import model_id
from sadi.infra import checks
from sadi.infra.cache import cached, digest
from sadi.infra.jsonio import read_json
from sadi.sae.activations import (
    cached_activations,
    collect_activations,
    collect_dtype,
    exclude_outliers,
    fit_split_texts,
    native_bf16,
)
from sadi.sae.model import FEATURES_FILE, SparseAutoencoder, load_sae, save_sae
from sadi.sae.trainer import TopKTrainer, quality, train_topk

QUALITY_FILE = "quality.json"
# tasks whose fit splits give the training text (every registered one with plain text items)
TEXT_TASKS: tuple[str, ...] = (
    "boolq",
    "copa",
    "sst2",
    "winogrande",
    "mmlu",
    "xnli_en",
    "truthfulqa_mc2",
    "caa_sycophancy",
    "caa_hallucination",
    "caa_refusal",
    "caa_myopic_reward",
    "caa_corrigible_neutral_hhh",
)  # ~0.67M SmolLM2 tokens (texts cut at 256 tokens)


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of an SAE training run (all enter the cache key).

    Attributes:
        layer: decoder layer whose output the SAE reads.
        expansion: d_sae = expansion x d_model.
        k: active latents per token.
        tokens: activation tokens to collect at most (training + held apart).
        epochs: passes over the training tokens.
        batch_tokens: tokens per optimiser step.
        lr: Adam learning rate.
        aux_k, aux_coef, dead_tokens: AuxK: a latent is dead after `dead_tokens` training
            tokens without firing; the dead latents' top `aux_k` reconstruct the residual.
        held_out: fraction of texts kept apart for the quality figures.
        skip_first: positions at the start of each text excluded (attention sink).
        outlier_factor: tokens with norm > outlier_factor x median norm are excluded.
        max_text_tokens: texts are cut to this many tokens.
        collect_dtype: dtype of the collection forward: "bfloat16", "float32", or "auto"
            (bfloat16 on CUDA and on CPUs with native bf16 arithmetic, avx512_bf16 or
            amx_bf16; float32 elsewhere: on an AVX2-only CPU bf16 runs ~5x slower).
        tasks: tasks whose fit splits give the text.
        seed: seeds initialisation and shuffling.
    """

    layer: int
    expansion: int = 8
    k: int = 32
    tokens: int = 400_000
    epochs: int = 3
    batch_tokens: int = 4096
    lr: float = 2e-3
    aux_k: int = 256
    aux_coef: float = 1 / 32
    dead_tokens: int = 200_000
    held_out: float = 0.05
    skip_first: int = 1
    outlier_factor: float = 10.0
    max_text_tokens: int = 256
    collect_dtype: str = "auto"
    tasks: tuple[str, ...] = TEXT_TASKS
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "layer": self.layer >= 0,
            "expansion": self.expansion >= 1,
            "k": self.k >= 1,
            "tokens": self.tokens >= 1000,
            "epochs": self.epochs >= 1,
            "batch_tokens": self.batch_tokens >= 1,
            "lr": self.lr > 0,
            "held_out": 0 < self.held_out < 1,
            "skip_first": self.skip_first >= 0,
            "outlier_factor": self.outlier_factor > 1,
            "collect_dtype": self.collect_dtype in ("auto", "bfloat16", "float32"),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                f"bad SAE training values: { ({n: getattr(self, n) for n in bad}) }; layer >= 0, "
                "expansion, k, epochs >= 1, tokens >= 1000, lr > 0, 0 < held_out < 1, "
                "outlier_factor > 1, collect_dtype auto, bfloat16 or float32"
            )


def sae_key(model: nn.Module, texts_digest: str, cfg: TrainConfig) -> dict[str, Any]:
    """Everything that determines a trained SAE: model weights and shape, text, config."""
    return {
        "what": "topk-sae",
        "weights_fingerprint": weights_fingerprint(model),
        "shape": model_shape(model).as_dict(),
        "texts": texts_digest,
        "config": asdict(cfg),
    }


@torch.no_grad()
def feature_examples(
    sae: SparseAutoencoder,
    x: Tensor,
    owner: Tensor,
    position: Tensor,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    top: int = 8,
    before: int = 12,
    max_text_tokens: int = 256,
    batch: int = 8192,
) -> dict[str, Any]:
    """For every latent, the `top` tokens of `x` (the SAE's training tokens) on which it is
    largest: value, the token and up to `before` tokens of context before it.

    Returns {"top": top, "latents": {str(c): [{"value", "token", "context", "text"}, ...]}};
    a latent that never fires has an empty list.
    """
    d_sae = sae.d_sae
    best_v = torch.full((top, d_sae), -math.inf)
    best_i = torch.zeros((top, d_sae), dtype=torch.long)
    for i in range(0, len(x), batch):
        z = sae.encode(x[i : i + batch]).float()  # [b, d_sae]
        here = z.topk(min(top, len(z)), dim=0)
        v = torch.cat([best_v, here.values])
        idx = torch.cat([best_i, here.indices + i])
        t = v.topk(top, dim=0)
        best_v, best_i = t.values, idx.gather(0, t.indices)
    needed = sorted({int(owner[j]) for j in best_i[best_v > 0].tolist()})
    encoded = {i: list(tokenizer(texts[i])["input_ids"])[:max_text_tokens] for i in needed}
    latents: dict[str, list[dict[str, Any]]] = {}
    for c in range(d_sae):
        rows = []
        for r in range(best_v.shape[0]):
            value = float(best_v[r, c])
            if not value > 0:
                break
            j = int(best_i[r, c])
            ids = encoded[int(owner[j])]
            p = int(position[j])
            rows.append(
                {
                    "value": value,
                    "token": tokenizer.decode(ids[p : p + 1]),
                    "context": tokenizer.decode(ids[max(0, p - before) : p]),
                    "text": int(owner[j]),
                }
            )
        latents[str(c)] = rows
    return {"top": top, "before": before, "latents": latents}


def train_sae(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    cfg: TrainConfig,
    *,
    cache_dir: str | Path,
    data_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[SparseAutoencoder, Path, dict[str, Any]]:
    """The TopK SAE of `cfg` for `model`: from the cache, or trained and cached.

    The SAE's directory holds the SAELens files, `quality.json` (its figures) and
    `features.json` (each latent's top-activating training tokens, `feature_examples`).
    Returns (sae, its directory, its quality figures).
    """
    n_layers = len(decoder_layers(model))
    checks.layer_in_range(cfg.layer, n_layers)
    texts = fit_split_texts(cfg.tasks, data_dir)
    key = sae_key(model, digest(texts), cfg)
    model_name = model_id(model) or None

    def create(tmp: Path) -> None:
        t0 = time.perf_counter()
        x, owner, position, meta = cached_activations(
            model, tokenizer, texts, cfg, cache_dir=cache_dir, progress=progress
        )
        timings: dict[str, float] = {"collect_s": meta["collect_s"]}
        keep = exclude_outliers(x, cfg.outlier_factor)
        gen = torch.Generator().manual_seed(cfg.seed)
        texts_seen = owner.unique()
        held = texts_seen[torch.randperm(len(texts_seen), generator=gen)][
            : max(1, int(cfg.held_out * len(texts_seen)))
        ]
        is_held = torch.isin(owner, held)
        train = keep & ~is_held
        train_x, held_x = x[train], x[keep & is_held]
        t1 = time.perf_counter()
        trainer, log = train_topk(train_x, cfg, progress=progress)
        timings["train_s"] = time.perf_counter() - t1
        sae = trainer.to_sae(
            cfg.layer,
            model_name,
            {"sadi_training": asdict(cfg), "sadi_weights_fingerprint": weights_fingerprint(model)},
        )
        t2 = time.perf_counter()
        examples = feature_examples(
            sae,
            train_x,
            owner[train],
            position[train],
            tokenizer,
            texts,
            max_text_tokens=cfg.max_text_tokens,
        )
        timings["examples_s"] = time.perf_counter() - t2
        figures = {
            **{f"held_out_{k}": v for k, v in quality(sae, held_x).items()},
            **{f"train_{k}": v for k, v in quality(sae, train_x[:100_000]).items()},
            "tokens_collected": len(x),
            "tokens_trained": len(train_x),
            "tokens_held_out": len(held_x),
            "outliers_excluded": int((~keep).sum()),
            "outlier_fraction": float((~keep).float().mean()),
            "skip_first_positions": cfg.skip_first,
            "collect_dtype": meta["dtype"],
            "activations_cached": meta["cached"],
            "texts": len(texts),
            "timings_s": {
                **timings,
                # collection as measured when it ran (it may have been reused from the cache)
                "total_s": timings["collect_s"] + timings["train_s"] + timings["examples_s"],
                "this_call_s": time.perf_counter() - t0,
            },
            "training": log,
            "config": asdict(cfg),
        }
        save_sae(sae, tmp)
        (tmp / QUALITY_FILE).write_text(json.dumps(figures, indent=2) + "\n")
        (tmp / FEATURES_FILE).write_text(json.dumps(examples) + "\n")

    def read(entry: Path) -> tuple[SparseAutoencoder, Path, dict[str, Any]]:
        return load_sae(entry), entry, read_json(entry / QUALITY_FILE)

    return cached(Path(cache_dir) / "saes", key, create, read)[0]


__all__ = [
    "FEATURES_FILE",
    "QUALITY_FILE",
    "TEXT_TASKS",
    "TopKTrainer",
    "TrainConfig",
    "cached_activations",
    "collect_activations",
    "collect_dtype",
    "exclude_outliers",
    "feature_examples",
    "fit_split_texts",
    "native_bf16",
    "quality",
    "sae_key",
    "train_sae",
    "train_topk",
]
