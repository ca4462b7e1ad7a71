"""apply: steered vs unsteered full forward on a batch of 8 x 64 tokens of COPA text.

Each row is real text (consecutive COPA items, premise + correct continuation, joined by
spaces), tokenised and cut to exactly 64 tokens; its first 48 tokens are the prompt, so the
edit position (the last prompt token) is position 47 and the rest is the continuation, as
when scoring prompt + continuation rows.

For each component and mode, SADI is fitted once on 150 COPA fit pairs (k: 4 for head,
100 for neuron / neuron_down, 10 for hidden / residual; strength 5), and two sides run
interleaved:

- `unsteered`: `model(input_ids, attention_mask=...)`.
- `steered`: `with sadi.apply(model) as h: h.set_layout(layout); model(...)`; entering and
  leaving `apply` (hook registration and removal) is inside the timed region.

AUSteer cases (one per site: head, hidden, residual): fitted once on the same pairs, k=100
units, alpha 10, edited at every position of the batch (its policy); target <= 1.05.

SAS cases (code space with the error term kept, target <= 1.10; decoder directions, <= 1.05):
fitted on the same pairs at layer 15 with a TopK SAE of SmolLM2's shape (d_sae 8 x 576,
k 32; a seeded random one unless `sas_sae` names a trained directory: the cost does not
depend on what the SAE learned), tau 0, lambda 4, edited from the last prompt token on.

Both sides run under `torch.inference_mode`. Targets: online <= 1.05, faithful <= 1.6
(ratio of the medians, steered / unsteered). Faithful runs in one forward with a shadow
position (`sadi.core.shadow`); `faithful_two_pass` measures the fallback path (a separate clean
pass first, used for ALiBi models and generation prefills) against the same target.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from benchmarks.bench_fit import copa_pairs
from benchmarks.common import (
    environment,
    interleaved,
    load_default_model,
    loadavg,
    paired_ratio_median,
    summary,
    write_result,
)
from sadi.core.architectures import model_shape
from sadi.core.positions import BatchLayout
from sadi.data.tasks import load_task
from sadi.sae import SAEConfig, SparseAutoencoder, load_sae
from sadi.steerers import SADI, SAS, AUSteer, Steerer
from sadi.steerers.sadi import SadiMode

NAME = "apply"
TARGETS = {
    "online": 1.05,
    "faithful": 1.6,
    "faithful_two_pass": 1.6,
    "austeer": 1.05,
    "sas_code": 1.10,
    "sas_decoder": 1.05,
}
SAS_MODES = ("code", "decoder")
SAS_LAYER, SAS_LAM = 15, 4.0
AUSTEER_SITES = ("head", "hidden", "residual")  # the paper's attention, ffn, layer
AUSTEER_K, AUSTEER_ALPHA = 100, 10.0
K = {"head": 4, "neuron": 100, "neuron_down": 100, "hidden": 10, "residual": 10}
COMPONENTS = ("head", "neuron", "neuron_down", "hidden", "residual")
MODES: tuple[str, ...] = ("online", "faithful", "faithful_two_pass")
STRENGTH = 5.0
BATCH, LENGTH, PROMPT = 8, 64, 48
DEFAULT_REPEATS = 15
WARMUP = 1


def _random_sae(d_model: int, expansion: int = 8, k: int = 32) -> SparseAutoencoder:
    """A seeded random TopK SAE of layer SAS_LAYER (the apply cost does not depend on it)."""
    g = torch.Generator().manual_seed(0)
    d_sae = expansion * d_model
    w = torch.randn(d_sae, d_model, generator=g)
    w = w / w.norm(dim=1, keepdim=True)
    cfg = SAEConfig("topk", d_model, d_sae, k=k, apply_b_dec_to_input=True, layer=SAS_LAYER)
    return SparseAutoencoder(cfg, w.T.clone(), torch.zeros(d_sae), w, torch.zeros(d_model))


def copa_rows(
    tok: PreTrainedTokenizerBase, batch: int = BATCH, length: int = LENGTH, prompt: int = PROMPT
) -> tuple[Tensor, Tensor, BatchLayout]:
    """(input_ids [batch, length], attention_mask, layout) from COPA fit-split text."""
    items = list(load_task("copa").splits["fit"])
    rows: list[list[int]] = []
    cursor = 0
    for _ in range(batch):
        ids: list[int] = []
        while len(ids) < length:
            item = items[cursor % len(items)]
            cursor += 1
            text = item.question + item.choices[item.label]
            ids += list(tok((" " if ids else "") + text, add_special_tokens=False)["input_ids"])
        rows.append(ids[:length])
    input_ids = torch.tensor(rows, dtype=torch.long)
    mask = torch.ones_like(input_ids)
    layout = BatchLayout(
        seq_lengths=torch.full((batch,), length, dtype=torch.long),
        prompt_lengths=torch.full((batch,), prompt, dtype=torch.long),
        padded_length=length,
        padding_side="right",
    )
    return input_ids, mask, layout


def run(
    repeats: int | None = None,
    model: nn.Module | None = None,
    tok: PreTrainedTokenizerBase | None = None,
    out_dir: Path | None = None,
    components: tuple[str, ...] = COMPONENTS,
    modes: tuple[str, ...] = MODES,
    austeer_sites: tuple[str, ...] = AUSTEER_SITES,
    sas_modes: tuple[str, ...] = SAS_MODES,
    sas_sae: str | Path | None = None,
    max_wait_s: float = 5.0,
) -> dict[str, Any]:
    """Measure steered vs unsteered forwards; write `<out_dir>/apply.json`, return it."""
    if model is None or tok is None:
        model, tok = load_default_model()
    n_repeats = repeats or DEFAULT_REPEATS
    env = environment()
    pairs = copa_pairs()
    input_ids, mask, layout = copa_rows(tok)

    def unsteered() -> Tensor:
        with torch.inference_mode():
            return model(input_ids, attention_mask=mask).logits  # type: ignore[no-any-return]

    def steered_with(s: Steerer) -> Callable[[], Tensor]:
        def call() -> Tensor:
            with torch.inference_mode(), s.apply(model) as handle:
                handle.set_layout(layout)
                return model(input_ids, attention_mask=mask).logits  # type: ignore[no-any-return]

        return call

    reference = unsteered()
    cases: list[dict[str, Any]] = []

    def measure(s: Steerer, component: str, mode: str, k: int, method: str) -> dict[str, Any]:
        steered = steered_with(s)
        # sanity check: the steering changes the logits (so the hooks do fire)
        diff = float((steered() - reference).abs().max())
        timings = interleaved(
            {"unsteered": unsteered, "steered": steered},
            repeats=n_repeats,
            warmup=WARMUP,
            max_wait_s=max_wait_s,
            total_wait_s=3 * max_wait_s,
        )
        times = timings.times
        med = {k: summary(v)["median_s"] for k, v in times.items()}
        ratio = med["steered"] / med["unsteered"]
        target = TARGETS[mode]
        return {
            "method": method,
            "component": component,
            "mode": mode,
            "k": k,
            "selected_layers": s.selected_layers(),
            "max_abs_logit_change": diff,
            "times_s": times,
            "stats": {k: summary(v) for k, v in times.items()},
            "medians_s": med,
            "ratio": ratio,
            "paired_ratio_median": paired_ratio_median(times["steered"], times["unsteered"]),
            "target": target,
            "meets_target": ratio <= target,
            "contention": timings.contention(),
            "quiet_only": timings.quiet_ratio("steered", "unsteered"),
        }

    for component in components:
        fitted = SADI(component, k=K[component], strength=STRENGTH, progress=False)
        with torch.inference_mode():
            fitted.fit(model, tok, pairs)
        for mode in modes:
            # the fit does not depend on the mode: fit once, adopt the state for the other
            sadi_mode: SadiMode = "online" if mode == "online" else "faithful"
            s = SADI(component, k=K[component], strength=STRENGTH, mode=sadi_mode)
            s.adopt(fitted)
            s.one_pass = mode != "faithful_two_pass"
            cases.append(measure(s, component, mode, K[component], "sadi"))
    for component in austeer_sites:
        au = AUSteer(component, k=AUSTEER_K, alpha=AUSTEER_ALPHA, progress=False)
        with torch.inference_mode():
            au.fit(model, tok, pairs)
        cases.append(measure(au, component, "austeer", AUSTEER_K, "austeer"))
    if sas_modes:
        sae = load_sae(sas_sae) if sas_sae is not None else _random_sae(model_shape(model).d_model)
        sas = SAS(sae=sae, layer=SAS_LAYER, tau=0.0, lam=SAS_LAM, progress=False)
        with torch.inference_mode():
            sas.fit(model, tok, pairs)
        for sas_mode in sas_modes:
            s = sas.with_params(mode=sas_mode)
            cases.append(measure(s, "residual", f"sas_{sas_mode}", sae.cfg.k or 0, "sas"))
    result: dict[str, Any] = {
        "benchmark": NAME,
        "description": (
            "steered / unsteered full forward, batch 8 x 64 tokens of COPA text, prompt 48 "
            "tokens, SADI fitted on 150 COPA fit pairs, strength 5; AUSteer k=100, alpha 10, "
            "every position"
        ),
        **env,
        "loadavg_at_end": loadavg(),
        "setup": {
            "batch": BATCH,
            "length": LENGTH,
            "prompt_length": PROMPT,
            "strength": STRENGTH,
            "k": K,
            "austeer": {"sites": list(austeer_sites), "k": AUSTEER_K, "alpha": AUSTEER_ALPHA},
            "sas": {
                "modes": list(sas_modes),
                "layer": SAS_LAYER,
                "lam": SAS_LAM,
                "sae": str(sas_sae) if sas_sae is not None else "random TopK, 8 x d_model, k 32",
            },
            "n_pairs": len(pairs),
            "grad_mode": "torch.inference_mode on both sides",
            "ratio_definition": "median(steered) / median(unsteered)",
        },
        "repeats": n_repeats,
        "warmup": WARMUP,
        "targets": TARGETS,
        "cases": cases,
        "meets_target": all(c["meets_target"] for c in cases),
    }
    write_result(NAME, result, out_dir)
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
