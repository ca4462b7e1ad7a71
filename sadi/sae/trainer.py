"""The TopK SAE trainer (Gao et al. 2024): a sparse-backward TopK autoencoder with AuxK for
dead latents, unit-norm decoder rows and Adam with a linear decay; and the quality figures
(variance explained, L0, dead latents) of an SAE on held-apart activations."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from sadi.sae.model import SAEConfig, SparseAutoencoder

if TYPE_CHECKING:
    from sadi.sae.train import TrainConfig


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


__all__ = ["TopKTrainer", "quality", "train_topk"]
