"""Open-ended generation, vLLM backend vs HF backend, under the same fitted steerer.

    .venv-vllm/bin/python -m benchmarks.bench_vllm [--prompts 64] [--tokens 128] [--repeats 3]

64 prompts x 128 new tokens (exactly: end-of-text is ignored on both sides), greedy, CAA at
layer 10 fitted on COPA pairs; the HF side is sadi's HF path (`Steerer.apply` around
`model.generate`, all prompts in one left-padded batch), the vLLM side `sadi.vllm` (one
engine call, the steerer named per request). The sides run interleaved in one process, the
order rotating every round; the figure is the ratio of median tokens/s, with vLLM unsteered
beside it (what the hooks cost inside vLLM). Writes benchmarks/results/vllm_generation.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RESULTS_DIR

LAYER, MULTIPLIER = 10, 4.0


def prompts_of(n: int) -> list[str]:
    """n open-ended prompts from COPA's fit split (its questions, as written)."""
    from sadi.data.tasks import load_task

    items = load_task("copa").splits["fit"]
    return [items[i % len(items)].question for i in range(n)]


def run(
    prompts: int = 64, tokens: int = 128, repeats: int = 3, out_dir: Path = RESULTS_DIR
) -> dict[str, Any]:
    from vllm import SamplingParams

    from sadi.core.fingerprints import weights_fingerprint
    from sadi.core.models import DEFAULT_MODEL, load_model, model_path
    from sadi.data.pairs import make_pairs
    from sadi.data.tasks import load_task
    from sadi.steerers.caa import CAA
    from sadi.vllm.engine import Request, SteeredVLLM, VLLMSettings

    model, tok = load_model(DEFAULT_MODEL)
    pairs = make_pairs(load_task("copa").splits["fit"], n_pairs=16, seed=0)
    caa = CAA(layer=LAYER, multiplier=MULTIPLIER, progress=False).fit(model, tok, pairs)
    texts = prompts_of(prompts)
    settings = VLLMSettings(max_model_len=512, kv_cache_mb=2048, max_num_seqs=prompts)
    engine = SteeredVLLM(model_path(DEFAULT_MODEL), weights_fingerprint(model), "float32", settings)
    engine.install("caa", caa)
    engine.self_test("caa", caa, model, tok)
    ids = [list(tok(t)["input_ids"]) for t in texts]
    params = SamplingParams(temperature=0, max_tokens=tokens, min_tokens=tokens, ignore_eos=True)

    tok.padding_side = "left"
    batch = tok(texts, return_tensors="pt", padding=True)

    def hf_steered() -> int:
        with torch.inference_mode(), caa.apply(model):
            out = model.generate(
                **batch,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
        return int(out.shape[0] * (out.shape[1] - batch["input_ids"].shape[1]))

    def vllm(steerer: str | None) -> Callable[[], int]:
        def go() -> int:
            outs = engine.generate([Request(i, steerer) for i in ids], params)
            return sum(len(o.outputs[0].token_ids) for o in outs)

        return go

    sides: dict[str, Callable[[], int]] = {
        "hf_steered": hf_steered,
        "vllm_steered": vllm("caa"),
        "vllm_unsteered": vllm(None),
    }
    for fn in sides.values():  # warm-up, unrecorded
        fn()
    rates: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            gc.collect()
            t = time.perf_counter()
            n = sides[name]()
            rates[name].append(n / (time.perf_counter() - t))
            assert n == prompts * tokens, (name, n)
    med = {name: statistics.median(v) for name, v in rates.items()}
    result = {
        "what": f"{prompts} prompts x {tokens} new tokens, greedy, CAA layer {LAYER} "
        f"(multiplier {MULTIPLIER}); SmolLM2-135M-Instruct float32",
        "device": f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "torch_threads": torch.get_num_threads(),
        "vllm_version": engine.version,
        "repeats": repeats,
        "tokens_per_s": rates,
        "median_tokens_per_s": med,
        "ratio_vllm_over_hf_steered": med["vllm_steered"] / med["hf_steered"],
        "ratio_vllm_steered_over_unsteered": med["vllm_steered"] / med["vllm_unsteered"],
        "gpu": "not measured: no GPU machine was lent to the session that ran this",
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vllm_generation.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    r = run(args.prompts, args.tokens, args.repeats, args.out)
    med = r["median_tokens_per_s"]
    print(f"{r['what']}; {r['device']}")
    for name, rate in med.items():
        print(f"  {name:<16} {rate:8.1f} tokens/s")
    print(
        f"  vLLM / HF (steered): {r['ratio_vllm_over_hf_steered']:.2f}x; vLLM steered / "
        f"unsteered: {r['ratio_vllm_steered_over_unsteered']:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
