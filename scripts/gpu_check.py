"""The prepared GPU check: what steering costs on the models users steer, in one short command.

    python scripts/gpu_check.py                   # on a GPU machine: at most ~8 minutes
    python scripts/gpu_check.py --tiny --out x.json   # tiny shapes, any machine (the test)
    make gpu-check

Needs no network and no weights: it builds random-init models of the Llama-2-7B and Qwen3-8B
shapes in bfloat16 on the GPU (a random model costs what a trained one of its shape costs;
its numbers are timings, not results) and a byte-level tokenizer. Per shape:

- a plain forward (batch x tokens) and its tokens/s;
- per registered method: the fit on synthetic contrastive pairs (seconds) and the steered
  forward against the plain one (median of interleaved rounds; ratio), with peak GPU
  memory;
- the sweep engine (`sadi.sweep.SweepScores`: baseline + 16 CAA multipliers on shared
  prefixes) against per-point evaluation (one `SteeredLM` scoring per point) on synthetic
  A/B items, the scores of both checked to agree;

and writes `benchmarks/results/gpu.json` (the device's name, torch/CUDA versions, every
figure), rewritten after each part so a run stopped from outside keeps what it measured
(`"complete": false` until the end). A wall-clock budget (`--budget-s`, default 480; each
shape gets its share and what the earlier ones left) skips what would not fit, and a part
that fails (out of memory, say) is recorded with its error; both say so in the JSON, and a
failure makes the exit status 1.

On a machine with PyTorch but no network, `bash scripts/gpu_wheels.sh` (here) fetches the
few wheels it lacks into .whl/, and `make gpu-check PY=python3` installs them there first.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sadi.data.pairs import Pair  # noqa: E402
from sadi.eval.lm import SteeredLM  # noqa: E402
from sadi.sae.model import SAEConfig, SparseAutoencoder  # noqa: E402
from sadi.steerers import CAA, Steerer  # noqa: E402
from sadi.steerers.registry import methods  # noqa: E402
from sadi.sweep import SweepScores  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "gpu.json"
SHAPES: dict[str, dict[str, Any]] = {
    "llama2-7b": {
        "family": "llama",
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 32000,
    },
    "qwen3-8b": {
        "family": "qwen3",
        "hidden_size": 4096,
        "intermediate_size": 12288,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 151936,
    },
}
TINY = {
    "tiny-llama": {**SHAPES["llama2-7b"], "hidden_size": 64, "intermediate_size": 128}
    | {"num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4},
    "tiny-qwen3": {**SHAPES["qwen3-8b"], "hidden_size": 64, "intermediate_size": 128}
    | {"num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2}
    | {"head_dim": 16, "vocab_size": 1024},
}
MULTIPLIERS = [0.25 * i for i in range(1, 17)]  # a 16-point CAA sweep


def byte_tokenizer() -> Any:
    """A byte-level tokenizer (no files, no network): 256 bytes + pad/bos/eos."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
    )


def build_model(shape: dict[str, Any], device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A random-init model of `shape`, built directly on `device` in `dtype`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = {k: v for k, v in shape.items() if k != "family"}
    config = AutoConfig.for_model(shape["family"], **kwargs, max_position_embeddings=4096)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config)
    finally:
        torch.set_default_dtype(previous)
    model.config.name_or_path = f"random-{shape['family']}"
    model.config.pad_token_id = 0
    return model.eval()


def pairs(n: int) -> list[Pair]:
    return [
        Pair(
            f"Question {i}: is the statement number {i} about item {i * 7 % 13} true?",
            " Yes, it is true.",
            " No, it is false.",
            f"p{i}",
        )
        for i in range(n)
    ]


def unfitted(method: str, n_layers: int, d_model: int, device: torch.device) -> Steerer:
    """`method` with its defaults, its layer (where it has one) in the middle of the model,
    SAS on a random ReLU SAE of that layer (4 x d_model latents)."""
    import inspect

    cls = methods()[method]
    params = inspect.signature(cls).parameters
    kwargs: dict[str, Any] = {"progress": False}
    if "layer" in params:
        kwargs["layer"] = n_layers // 2
    if "k" in params and d_model < 256:  # tiny shapes: fewer heads and units than defaults
        kwargs["k"] = 2
    if "sae" in params:
        cfg = SAEConfig(
            architecture="standard", d_in=d_model, d_sae=4 * d_model, layer=n_layers // 2
        )
        g = torch.Generator().manual_seed(0)
        sae = SparseAutoencoder(
            cfg,
            W_enc=torch.randn(d_model, 4 * d_model, generator=g) / d_model**0.5,
            b_enc=torch.zeros(4 * d_model),
            W_dec=torch.randn(4 * d_model, d_model, generator=g) / d_model**0.5,
            b_dec=torch.zeros(d_model),
        )
        kwargs["sae"] = sae.to(device)
    return cls(cls.spec.default_component, **kwargs)


def timed(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def interleaved(sides: dict[str, Callable[[], object]], rounds: int, sync: Any) -> dict[str, float]:
    """Median seconds per side over `rounds` rounds (one warm-up round not counted; the order
    rotates each round)."""
    names = list(sides)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds + 1):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            t = timed(sides[n], sync)
            if r:
                times[n].append(t)
    return {n: statistics.median(v) for n, v in times.items()}


def check_shape(
    name: str,
    shape: dict[str, Any],
    args: argparse.Namespace,
    deadline: float,
    out: dict[str, Any],
    save: Callable[[], None],
) -> dict[str, Any]:
    """Fill `out` with `shape`'s figures, calling `save` after each part (a run stopped from
    outside keeps what it measured)."""
    cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    peak = (lambda: torch.cuda.max_memory_allocated() / 2**30) if cuda else (lambda: None)
    reset = torch.cuda.reset_peak_memory_stats if cuda else (lambda: None)
    t0 = time.perf_counter()
    model = build_model(shape, device, dtype)
    tok = byte_tokenizer()
    out |= {
        "params": sum(p.numel() for p in model.parameters()),
        "dtype": "bfloat16",
        "build_s": time.perf_counter() - t0,
        "batch": args.batch,
        "tokens": args.tokens,
    }
    ids = torch.randint(3, 259, (args.batch, args.tokens), device=device)

    def plain() -> None:
        with torch.no_grad():
            model(input_ids=ids)

    reset()
    plain_s = interleaved({"plain": plain}, args.rounds, sync)["plain"]
    out["plain_forward"] = {
        "seconds": plain_s,
        "tokens_per_s": args.batch * args.tokens / plain_s,
        "peak_memory_gb": peak(),
    }
    save()
    n_layers, d_model = shape["num_hidden_layers"], shape["hidden_size"]
    # the sweep first: one figure per shape even where the methods' fits run out the budget
    out["sweep"] = guarded(
        deadline, lambda: sweep_check(model, tok, args, sync, peak, reset, n_layers)
    )
    print(f"{name} sweep: {out['sweep']}")
    save()
    out["methods"] = {}
    for method in sorted(methods()):
        reset()

        def measure(method: str = method) -> dict[str, Any]:
            steerer = unfitted(method, n_layers, d_model, device)
            start = time.perf_counter()
            steerer.fit(model, tok, pairs(args.pairs))
            sync()
            fit_s = time.perf_counter() - start

            def steered() -> None:
                with torch.no_grad(), steerer.apply(model):
                    model(input_ids=ids)

            got = interleaved({"plain": plain, "steered": steered}, args.rounds, sync)
            return {
                "fit_s": fit_s,
                "fit_pairs": args.pairs,
                "plain_s": got["plain"],
                "steered_s": got["steered"],
                "steered_over_plain": got["steered"] / got["plain"],
                "steered_tokens_per_s": args.batch * args.tokens / got["steered"],
                "peak_memory_gb": peak(),
            }

        got = out["methods"][method] = guarded(deadline, measure)
        if "fit_s" in got:
            print(f"{name} {method}: fit {got['fit_s']:.1f}s, x{got['steered_over_plain']:.3f}")
        else:
            print(f"{name} {method}: {got}")
        save()
    return out


def guarded(deadline: float, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`fn()`'s figures; a record of why not where the budget is spent or `fn` fails (out of
    memory, say), so one part's failure costs no other part's figures."""
    if time.perf_counter() > deadline:
        return {"skipped": "over the --budget-s wall-clock budget"}
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 -- recorded in the JSON, and the exit status says so
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return {"error": f"{type(e).__name__}: {e}"[:2000]}


def sweep_check(
    model: nn.Module,
    tok: Any,
    args: argparse.Namespace,
    sync: Any,
    peak: Any,
    reset: Any,
    n_layers: int,
) -> dict[str, Any]:
    """Baseline + 16 CAA multipliers: the engine on shared prefixes vs per-point scoring."""
    from lm_eval.api.instance import Instance

    caa = CAA("residual", layer=n_layers // 2, progress=False).fit(model, tok, pairs(args.pairs))
    conditions: dict[str, Steerer | None] = {"baseline": None}
    conditions |= {f"m{m:g}": caa.with_params(multiplier=m) for m in MULTIPLIERS}
    context = "Read the passage and answer. " * max(1, args.tokens // 32)
    items = [
        (f"{context}Item {i}: is it so? Answer:", c) for i in range(args.items) for c in ("A", "B")
    ]
    requests = [
        Instance(request_type="loglikelihood", doc={}, arguments=(c, k), idx=j)
        for j, (c, k) in enumerate(items)
    ]
    lms = {
        n: SteeredLM(model, steerer=st, tokenizer=tok, batch_size=args.batch, progress=False)
        for n, st in conditions.items()
    }
    max_length = lms["baseline"].max_length
    tokens = [lms["baseline"]._encode_pair(c, k) for c, k in items]
    per_point: dict[str, list[float]] = {}

    def points() -> None:
        for n, lm in lms.items():
            per_point[n] = [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]

    engine: dict[str, list[float]] = {}

    def sweep() -> None:
        scores = SweepScores(model, conditions, batch_size="auto", progress=False)
        for n in conditions:
            engine[n] = [ll for ll, _ in scores.get(n, tokens, max_length)]

    reset()
    got = interleaved({"per_point": points, "engine": sweep}, 1, sync)

    def diff(names: Any) -> float:
        return max(abs(a - b) for n in names for a, b in zip(engine[n], per_point[n], strict=True))

    return {
        "points": len(MULTIPLIERS),
        "items": len(items),
        "per_point_s": got["per_point"],
        "engine_s": got["engine"],
        "engine_over_per_point": got["engine"] / got["per_point"],
        # engine vs per point: the unsteered rows show the dtype's own rounding (a shared
        # prefix's KV cache vs one full forward), the steered ones must stay near it
        "max_abs_loglikelihood_diff": diff(conditions),
        "baseline_abs_loglikelihood_diff": diff(["baseline"]),
        "peak_memory_gb": peak(),
    }


def versions() -> dict[str, str | None]:
    """The versions the figures are of (a GPU image's own packages, or the carried wheels)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("torch", "transformers", "accelerate", "lm_eval", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/gpu_check.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (tests; any machine)")
    ap.add_argument("--cpu", action="store_true", help="run on the CPU even where CUDA is")
    ap.add_argument("--shapes", nargs="*", default=None, help=f"default: {list(SHAPES)}")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--items", type=int, default=32, help="A/B items of the sweep check")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=480.0)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    # lm-eval warns once per SteeredLM built around a loaded model (17 per sweep check)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    table = TINY if args.tiny else SHAPES
    names = args.shapes or list(table)
    unknown = sorted(set(names) - set(table))
    if unknown:
        ap.error(f"unknown shapes {unknown}; choose from {list(table)}")
    cuda = torch.cuda.is_available() and not args.cpu
    if not cuda and not args.tiny:
        print("no CUDA device: the 7B/8B shapes are for a GPU machine; --tiny runs anywhere")
        return 2
    start = time.perf_counter()
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if cuda else f"cpu ({platform.machine()})",
        "gpu": cuda,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "versions": versions(),
        "date": time.strftime("%Y-%m-%d"),
        "budget_s": args.budget_s,
        "complete": False,
        "shapes": {},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        tmp.replace(args.out)

    for i, name in enumerate(names):
        # each shape may spend its share of the budget and what the earlier ones left
        deadline = start + args.budget_s * (i + 1) / len(names)
        shape: dict[str, Any] = {}
        result["shapes"][name] = shape
        try:
            check_shape(name, table[name], args, deadline, shape, save)
        except Exception as e:  # noqa: BLE001 -- the model did not build or run: recorded
            shape["error"] = f"{type(e).__name__}: {e}"[:2000]
            print(f"{name}: {shape['error']}")
        if cuda:  # the shape's model is gone: its memory back for the next
            torch.cuda.empty_cache()
        save()
    result["complete"] = True
    save()
    print(f"wrote {args.out}")
    failed = [
        f"{name}/{part}"
        for name, shape in result["shapes"].items()
        for part, got in [("model", shape), ("sweep", shape.get("sweep", {}))]
        + list(shape.get("methods", {}).items())
        if isinstance(got, dict) and "error" in got
    ]
    if failed:
        print(f"failed (see the JSON): {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
