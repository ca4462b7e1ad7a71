"""saelens: SAELens' TopK SAE trainer against sadi's, side by side on the same activations.

    /tmp/saelens-venv/bin/python -m benchmarks.bench_saelens --activations PATH [--tokens N]

Run it in a separate environment holding SAELens (`pip install torch==2.13.0
sae-lens==6.54.12`, then `pip install -e . --no-deps`): SAELens is not a dependency of sadi.
PATH is an `activations.safetensors` that `sadi.sae.train.cached_activations` wrote (key
"x", [n, d_model] float32; e.g. `~/.cache/sadi/sae_activations/<digest>/`). Both trainers
see the first 90% of the first N rows for one pass in batches of `--batch`, with the same
width, k and learning rate (each trainer's other defaults), interleaved `--repeats` times;
the figures are training tokens per second (wall time of the training loop only) and the
variance explained on the last 10% of the rows, held out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch


def _saelens() -> Any:
    try:
        import sae_lens
    except ImportError as err:
        raise SystemExit(
            "this benchmark needs SAELens in a separate environment: python -m venv "
            "/tmp/saelens-venv && /tmp/saelens-venv/bin/pip install torch==2.13.0 "
            "sae-lens==6.54.12 && /tmp/saelens-venv/bin/pip install -e . --no-deps"
        ) from err
    return sae_lens


def variance_explained(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    return 1.0 - float((x - x_hat).pow(2).sum()) / float((x - x.mean(0)).pow(2).sum())


def train_saelens(x: torch.Tensor, d_sae: int, k: int, batch: int, lr: float) -> Any:
    """(seconds, sae): one pass of SAELens' SAETrainer over `x`."""
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    cfg = TopKTrainingSAEConfig(d_in=x.shape[1], d_sae=d_sae, k=k, device="cpu")
    sae = TopKTrainingSAE(cfg)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=len(x),
        train_batch_size_samples=batch,
        lr=lr,
        lr_end=lr,
        device="cpu",
        logger=LoggingConfig(log_to_wandb=False),
    )
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))

    def batches() -> Any:
        while True:
            for i in range(0, len(x), batch):
                yield x[perm[i : i + batch]]

    trainer = SAETrainer(trainer_cfg, sae, batches())
    t = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - t
    return seconds, lambda h: sae.decode(sae.encode(h))


def train_sadi(x: torch.Tensor, expansion: int, k: int, batch: int, lr: float) -> Any:
    from sadi.sae.train import TrainConfig, train_topk

    cfg = TrainConfig(
        layer=0,
        expansion=expansion,
        k=k,
        epochs=1,
        batch_tokens=batch,
        lr=lr,
        tokens=max(1000, len(x)),
    )
    t = time.perf_counter()
    trainer, _ = train_topk(x, cfg, progress=False)
    seconds = time.perf_counter() - t
    sae = trainer.to_sae(0, None, {})
    return seconds, lambda h: sae.decode(sae.encode(h))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--activations", type=Path, required=True)
    ap.add_argument("--tokens", type=int, default=60_000)
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/saelens.json"))
    args = ap.parse_args()
    sae_lens = _saelens()
    from safetensors import safe_open

    with safe_open(str(args.activations), "pt") as f:
        x = f.get_slice("x")[: args.tokens].clone()
    n_train = int(0.9 * len(x))
    train, held = x[:n_train], x[n_train:]
    d_sae = args.expansion * x.shape[1]
    seconds: dict[str, list[float]] = {"saelens": [], "sadi": []}
    quality: dict[str, list[float]] = {"saelens": [], "sadi": []}
    for _ in range(args.repeats):
        for name in ("saelens", "sadi"):
            if name == "saelens":
                s, recon = train_saelens(train, d_sae, args.k, args.batch, args.lr)
            else:
                s, recon = train_sadi(train, args.expansion, args.k, args.batch, args.lr)
            with torch.no_grad():
                quality[name].append(variance_explained(held, recon(held)))
            seconds[name].append(s)
    med = {k: statistics.median(v) for k, v in seconds.items()}
    result = {
        "benchmark": "saelens",
        "versions": {"torch": torch.__version__, "sae_lens": sae_lens.__version__},
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "loadavg": os.getloadavg(),
        },
        "settings": {
            **vars(args),
            "activations": str(args.activations),
            "out": str(args.out),
            "d_in": x.shape[1],
            "d_sae": d_sae,
            "n_train": n_train,
            "n_held_out": len(held),
        },
        "seconds": seconds,
        "median_s": med,
        "tokens_per_s": {k: n_train / v for k, v in med.items()},
        "sadi_speedup": med["saelens"] / med["sadi"],
        "held_out_variance_explained": quality,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {k: result[k] for k in ("tokens_per_s", "sadi_speedup", "held_out_variance_explained")},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
