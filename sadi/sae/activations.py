"""The activations an SAE is trained on: text from the fit splits of the registered tasks
only, one decoder layer's output collected with the forward stopped after it (in bf16 where
that is native), outliers excluded, and the collection cached (keyed on the weights, the
text and the collection settings) so that another width, k or learning rate skips it."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from sadi.core.architectures import (
    architecture_of,
    model_shape,
    weights_fingerprint,
)
from sadi.core.architectures import site as site_of
from sadi.core.hooks import LayerHook, hooked
from sadi.infra.cache import cached, digest
from sadi.infra.jsonio import read_json

if TYPE_CHECKING:
    from sadi.sae.train import TrainConfig


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


__all__ = [
    "ACTIVATIONS_FILE",
    "cached_activations",
    "collect_activations",
    "collect_dtype",
    "exclude_outliers",
    "fit_split_texts",
    "native_bf16",
]
