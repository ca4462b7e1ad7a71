"""Training a TopK SAE offline on one decoder layer's output (the residual stream).

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

import copy
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from sadi.core.architectures import (
    architecture_of,
    decoder_layers,
    model_shape,
    weights_fingerprint,
)
from sadi.core.architectures import site as site_of
from sadi.core.hooks import LayerHook, hooked
from sadi.infra.cache import cached, digest
from sadi.infra.jsonio import read_json
from sadi.sae.model import FEATURES_FILE, SAEConfig, SparseAutoencoder, load_sae, save_sae

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


def native_bf16(device: torch.device) -> bool:
    """Whether bfloat16 matmuls run natively (fast) on `device`."""
    if device.type == "cuda":
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def collect_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype `TrainConfig.collect_dtype` names on `device` ("auto": see its doc)."""
    if name == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    return getattr(torch, name)  # type: ignore[no-any-return]


def fit_split_texts(tasks: Sequence[str], data_dir: str | Path | None = None) -> list[str]:
    """Each fit item's context + correct continuation, for `tasks` (fit splits only)."""
    from sadi.data.tasks import load_task

    texts = []
    for name in tasks:
        task = load_task(name, data_dir=data_dir)
        for item in task.splits["fit"]:
            texts.append(item.question + item.choices[item.label])
    return texts


class _Stop(Exception):
    """Raised by the read hook: nothing after the read layer is computed."""


@torch.no_grad()
def collect_activations(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    layer: int,
    *,
    max_tokens: int,
    max_text_tokens: int = 256,
    skip_first: int = 1,
    dtype: torch.dtype = torch.bfloat16,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """(activations [n, d_model] float32, text index [n], token position [n]) of decoder
    layer `layer`'s output over the real tokens of `texts` from position `skip_first` on, at
    most `max_tokens` (the position indexes the text's tokens, cut at `max_text_tokens`).

    Whole texts are drawn in a seeded order until `max_tokens` are covered, then read
    longest first (little padding, right-padded); the forward stops after
    `layer`; the model runs in `dtype` (a copy when it is held in another dtype).
    """
    work = model if next(model.parameters()).dtype == dtype else copy.deepcopy(model).to(dtype)
    work.eval()
    base = getattr(work, "base_model", work)
    device = next(work.parameters()).device
    encoded = [list(tokenizer(t)["input_ids"])[:max_text_tokens] for t in texts]
    # a seeded draw of whole texts up to the token budget, then read longest first
    drawn, budget = [], 0
    for i in torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist():
        if budget >= max_tokens:
            break
        drawn.append(i)
        budget += max(0, len(encoded[i]) - skip_first)
    order = sorted(drawn, key=lambda i: -len(encoded[i]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    grabbed: list[Tensor] = []

    def grab(_: int, act: Tensor) -> None:
        grabbed.append(act)
        raise _Stop

    out: list[Tensor] = []
    owners: list[Tensor] = []
    places: list[Tensor] = []
    n = 0
    bar = tqdm(total=max_tokens, desc=f"SAE: reading layer {layer}", disable=not progress)
    with hooked(work, site_of(architecture_of(work), "residual"), [LayerHook(layer, grab)]):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            rows = [encoded[i] for i in idx]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for j, r in enumerate(rows):
                ids[j, : len(r)] = torch.tensor(r)
                mask[j, : len(r)] = 1
            try:
                base(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
            except _Stop:
                pass
            act = grabbed.pop()
            keep = mask.bool()
            keep[:, :skip_first] = False
            out.append(act[keep.to(act.device)].float().cpu())
            owners.append(torch.tensor(idx).repeat_interleave(keep.sum(1)))
            places.append(keep.nonzero()[:, 1])
            n += len(out[-1])
            bar.update(len(out[-1]))
            if n >= max_tokens:
                break
    bar.close()
    return (
        torch.cat(out)[:max_tokens],
        torch.cat(owners)[:max_tokens],
        torch.cat(places)[:max_tokens],
    )


def exclude_outliers(x: Tensor, factor: float) -> Tensor:
    """[n] bool: tokens whose norm is at most `factor` x the median norm."""
    norms = x.norm(dim=1)
    return norms <= factor * norms.median()


@dataclass
class TopKTrainer:
    """A TopK SAE in training (parameters in float32) and its dead-latent counters."""

    d_in: int
    d_sae: int
    k: int
    seed: int = 0
    W_enc: Tensor = field(init=False)
    b_enc: Tensor = field(init=False)
    W_dec: Tensor = field(init=False)
    b_dec: Tensor = field(init=False)
    since_fired: Tensor = field(init=False)

    def __post_init__(self) -> None:
        g = torch.Generator().manual_seed(self.seed)
        w = torch.randn(self.d_sae, self.d_in, generator=g)
        self.W_dec = nn.Parameter(w / w.norm(dim=1, keepdim=True))
        self.W_enc = nn.Parameter(self.W_dec.detach().T.clone())
        self.b_enc = nn.Parameter(torch.zeros(self.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(self.d_in))
        self.since_fired = torch.zeros(self.d_sae, dtype=torch.long)

    def parameters(self) -> list[Tensor]:
        return [self.W_enc, self.b_enc, self.W_dec, self.b_dec]

    def pre(self, x: Tensor) -> Tensor:
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def decode_sparse(self, idx: Tensor, vals: Tensor) -> Tensor:
        """b_dec + sum_j vals_j W_dec[idx_j] per row, touching only the active rows."""
        return F.embedding_bag(idx, self.W_dec, per_sample_weights=vals, mode="sum") + self.b_dec

    def backward(
        self, x: Tensor, variance: Tensor, aux_k: int, aux_coef: float, dead_tokens: int
    ) -> tuple[float, Tensor]:
        """Loss on the batch `x`, gradients into `.grad`; returns (normalised MSE, active
        indices [B, k]).

        The encoder's gradient is computed by hand and sparsely: only the k (+ aux) selected
        pre-activations of each row carry one, so dW_enc = xc^T @ G with G sparse [B, d_sae]
        costs nnz x d_in instead of a second dense B x d_in x d_sae product. The decoder side
        goes through autograd (`embedding_bag` over the active rows).
        """
        xc = x - self.b_dec.detach()
        with torch.no_grad():
            pre = xc @ self.W_enc + self.b_enc
        top = pre.topk(self.k, dim=-1)
        top_idx = top.indices
        vals = torch.relu(top.values).requires_grad_(True)
        x_hat = self.decode_sparse(top_idx, vals)
        err = x - x_hat
        mse = err.pow(2).sum(-1).mean() / variance
        total = mse
        # (leaf of the kept values, their pre-activations, their latent indices)
        leaves = [(vals, top.values, top_idx)]
        dead = self.since_fired >= dead_tokens
        n_dead = int(dead.sum())
        if n_dead and aux_coef > 0:
            dead_idx = dead.nonzero().flatten()
            sub = pre[:, dead_idx].topk(min(aux_k, n_dead), dim=-1)  # only dead columns
            aux_idx = dead_idx[sub.indices]
            aux_vals = torch.relu(sub.values).requires_grad_(True)
            aux_hat = F.embedding_bag(aux_idx, self.W_dec, per_sample_weights=aux_vals, mode="sum")
            aux_mse = (err.detach() - aux_hat).pow(2).sum(-1).mean() / variance
            total = total + aux_coef * aux_mse
            leaves.append((aux_vals, sub.values, aux_idx))
        total.backward()
        idx = torch.cat([i for _, _, i in leaves], dim=1)  # [B, k (+ aux)]
        grad = torch.cat([v.grad * (p > 0) for v, p, _ in leaves], dim=1)  # type: ignore[operator]
        rows = torch.arange(len(x)).repeat_interleave(idx.shape[1])
        g_sparse = torch.sparse_coo_tensor(
            torch.stack([rows, idx.flatten()]),
            grad.flatten(),
            (len(x), self.d_sae),
            check_invariants=False,
        )
        self.W_enc.grad = torch.sparse.mm(g_sparse.t(), xc.detach()).t().contiguous()
        db_enc = torch.zeros(self.d_sae).index_add_(0, idx.flatten(), grad.flatten())
        self.b_enc.grad = db_enc
        # pre depends on b_dec through xc = x - b_dec: d pre / d b_dec = -W_enc^T
        b_dec_enc = -(db_enc @ self.W_enc.detach().T)
        self.b_dec.grad = b_dec_enc if self.b_dec.grad is None else self.b_dec.grad + b_dec_enc
        return float(mse.detach()), top_idx

    @torch.no_grad()
    def after_step(self, active: Tensor, n_tokens: int) -> None:
        fired = torch.zeros(self.d_sae, dtype=torch.bool)
        fired[active.flatten()] = True
        self.since_fired += n_tokens
        self.since_fired[fired] = 0
        self.W_dec.data /= self.W_dec.data.norm(dim=1, keepdim=True).clamp(min=1e-8)

    def to_sae(
        self, layer: int, model_name: str | None, extra: dict[str, Any]
    ) -> SparseAutoencoder:
        cfg = SAEConfig(
            architecture="topk",
            d_in=self.d_in,
            d_sae=self.d_sae,
            k=self.k,
            apply_b_dec_to_input=True,
            layer=layer,
            hook_name=f"blocks.{layer}.hook_resid_post",
            model_name=model_name,
            extra=extra,
        )
        return SparseAutoencoder(
            cfg, *(t.detach().clone() for t in (self.W_enc, self.b_enc, self.W_dec, self.b_dec))
        )


@torch.no_grad()
def quality(sae: SparseAutoencoder, x: Tensor, batch: int = 8192) -> dict[str, float]:
    """Variance explained, L0 and the dead fraction of `sae` on the tokens `x`."""
    mean = x.mean(0)
    sse = 0.0
    l0 = 0.0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        z = sae.encode(xb)
        sse += float((xb - sae.decode(z)).pow(2).sum())
        nz = z != 0
        l0 += float(nz.sum())
        fired |= nz.any(0)
    total = float((x - mean).pow(2).sum())
    return {
        "variance_explained": 1.0 - sse / total,
        "l0": l0 / len(x),
        "dead_fraction": 1.0 - float(fired.float().mean()),
        "n_tokens": float(len(x)),
    }


def train_topk(
    x: Tensor, cfg: TrainConfig, *, progress: bool = True
) -> tuple[TopKTrainer, dict[str, Any]]:
    """Train a TopK SAE on the activations `x` [n, d_model]; returns it and a training log."""
    torch.manual_seed(cfg.seed)
    n, d = x.shape
    trainer = TopKTrainer(d, cfg.expansion * d, cfg.k, seed=cfg.seed)
    with torch.no_grad():
        trainer.b_dec.copy_(x.mean(0))
    variance = (x - x.mean(0)).pow(2).sum(-1).mean()
    opt = torch.optim.Adam(trainer.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    steps_per_epoch = math.ceil(n / cfg.batch_tokens)
    total_steps = steps_per_epoch * cfg.epochs
    decay_from = int(0.8 * total_steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    log: list[dict[str, float]] = []
    step = 0
    bar = tqdm(
        total=total_steps,
        desc=f"SAE: training {d}->{trainer.d_sae}, k={cfg.k}",
        disable=not progress,
    )
    for _epoch in range(cfg.epochs):
        perm = torch.randperm(n, generator=gen)
        for s in range(steps_per_epoch):
            xb = x[perm[s * cfg.batch_tokens : (s + 1) * cfg.batch_tokens]]
            lr = cfg.lr * min(1.0, (total_steps - step) / max(1, total_steps - decay_from))
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            mse, active = trainer.backward(xb, variance, cfg.aux_k, cfg.aux_coef, cfg.dead_tokens)
            opt.step()
            trainer.after_step(active, len(xb))
            step += 1
            if step % 50 == 0 or step == total_steps:
                log.append({"step": step, "nmse": mse, "lr": lr})
                bar.set_postfix(nmse=f"{mse:.3f}")
            bar.update(1)
    bar.close()
    return trainer, {"steps": step, "log": log}


def sae_key(model: nn.Module, texts_digest: str, cfg: TrainConfig) -> dict[str, Any]:
    """Everything that determines a trained SAE: model weights and shape, text, config."""
    return {
        "what": "topk-sae",
        "weights_fingerprint": weights_fingerprint(model),
        "shape": model_shape(model).as_dict(),
        "texts": texts_digest,
        "config": asdict(cfg),
    }


# the collection parameters of a TrainConfig: they alone determine the activations
_COLLECT_FIELDS = ("layer", "tokens", "max_text_tokens", "skip_first", "seed")
ACTIVATIONS_FILE = "activations.safetensors"


def cached_activations(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    cfg: TrainConfig,
    *,
    cache_dir: str | Path,
    progress: bool = True,
) -> tuple[Tensor, Tensor, Tensor, dict[str, Any]]:
    """`collect_activations` for `cfg`, cached under `<cache_dir>/sae_activations/` by model
    weights, text digest, dtype and the collection fields, so that training another SAE of
    the same layer (other k, width, lr, epochs) skips the collection forward.

    Returns (activations, text index, position, meta); meta holds the collection's measured
    seconds (`collect_s`, from when it ran) and `cached` (whether this call reused it).
    """
    from safetensors.torch import load_file, save_file

    dtype = collect_dtype(cfg.collect_dtype, next(model.parameters()).device)
    key = {
        "what": "sae-activations",
        "weights_fingerprint": weights_fingerprint(model),
        "shape": model_shape(model).as_dict(),
        "texts": digest(list(texts)),
        "dtype": str(dtype),
        **{name: getattr(cfg, name) for name in _COLLECT_FIELDS},
    }

    def create(tmp: Path) -> None:
        t0 = time.perf_counter()
        x, owner, position = collect_activations(
            model,
            tokenizer,
            texts,
            cfg.layer,
            max_tokens=cfg.tokens,
            max_text_tokens=cfg.max_text_tokens,
            skip_first=cfg.skip_first,
            dtype=dtype,
            seed=cfg.seed,
            progress=progress,
        )
        meta = {"collect_s": time.perf_counter() - t0, "dtype": str(dtype).removeprefix("torch.")}
        save_file(
            {"x": x.contiguous(), "owner": owner.contiguous(), "position": position.contiguous()},
            str(tmp / ACTIVATIONS_FILE),
        )
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")

    def read(entry: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
        return load_file(str(entry / ACTIVATIONS_FILE)), read_json(entry / "meta.json")

    (t, meta), hit = cached(Path(cache_dir) / "sae_activations", key, create, read)
    return t["x"], t["owner"], t["position"], {**meta, "cached": hit}


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
    if not cfg.layer < n_layers:
        raise ValueError(
            f"layer={cfg.layer} is out of range: the model has {n_layers} decoder layers; "
            f"choose 0 <= layer <= {n_layers - 1}"
        )
    texts = fit_split_texts(cfg.tasks, data_dir)
    key = sae_key(model, digest(texts), cfg)
    model_name = str(getattr(model.config, "name_or_path", "") or "") or None

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
