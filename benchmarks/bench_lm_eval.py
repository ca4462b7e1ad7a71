"""Steered vs unsteered lm-eval evaluation of COPA's select split, per method, interleaved.

Every side scores the same items through lm-eval (`sadi.eval.harness.evaluate_split`) with the
embedded SmolLM2; the ratio of each steered side's median to the unsteered median is the
figure. Targets: SADI online <= 1.05, SADI faithful <= 1.6 (one forward with a shadow
position; its two-pass fallback is reported too). ITI and CAA are reported against
the same baseline, and so are two peers steering with the same CAA vector at all positions:
the `steering-vectors` library (its `apply` around a plain HFLM) and lm-eval's own `steered`
model (reading the vector exported by `sadi.eval.interop`). The three all-positions CAA sides
must give the same log-likelihoods; the JSON records how closely they do, so a peer that
silently steered nothing (or something else) would show.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lm_eval.models.hf_steered import SteeredModel

from benchmarks.common import (
    environment,
    interleaved,
    load_default_model,
    paired_ratio_median,
    write_result,
)
from sadi.core.models import embedded_path
from sadi.data.pairs import make_pairs
from sadi.data.tasks import load_task
from sadi.eval.harness import evaluate_split
from sadi.eval.interop import export_lm_eval_steer
from sadi.eval.lm import SteeredLM
from sadi.steerers import CAA, ITI, SADI, Steerer

TARGETS = {"sadi_online": 1.05, "sadi_faithful": 1.6}
BATCH = 16
# One call varies by up to +-25% on 2 shared cores (slow spells hit whole rounds), so
# fewer rounds than this can put a side's median in a slow spell.
DEFAULT_REPEATS = 9
DEFAULT_ITEMS = 300  # the whole COPA select split
SAME_VECTOR = ("caa_all_positions", "peer_steering_vectors", "peer_lm_eval_steered")

Evaluation = tuple[dict[str, float], list[dict[str, Any]]]


def fit_steerers(model: Any, tok: Any) -> dict[str, Steerer]:
    """The steerers every side uses, fitted once on 150 COPA fit pairs (outside the timing)."""
    pairs = make_pairs(load_task("copa").splits["fit"], n_pairs=150, seed=0)
    sadi = SADI("head", k=4, strength=5.0, progress=False).fit(model, tok, pairs)
    caa = CAA(layer=15, multiplier=1.0, progress=False).fit(model, tok, pairs)
    two_pass = SADI("head", k=4, strength=5.0, mode="faithful").adopt(sadi)
    two_pass.one_pass = False  # the fallback path (ALiBi models, generation prefills)
    return {
        "sadi_online": sadi,
        "sadi_faithful": SADI("head", k=4, strength=5.0, mode="faithful").adopt(sadi),
        "sadi_faithful_two_pass": two_pass,
        "iti": ITI(k=13, alpha=15.0, progress=False).fit(model, tok, pairs),
        "caa": caa,
        "caa_all_positions": caa.with_params(positions="all"),
    }


def agreement(evaluations: dict[str, Evaluation], names: tuple[str, ...]) -> dict[str, Any]:
    """Max |log-likelihood difference| and accuracies of sides that should compute the same."""
    ref = evaluations[names[0]][1]
    out: dict[str, Any] = {"reference": names[0], "max_abs_loglik_diff": {}, "acc": {}}
    for name in names:
        metrics, samples = evaluations[name]
        out["acc"][name] = metrics["acc"]
        if name != names[0]:
            out["max_abs_loglik_diff"][name] = max(
                abs(a - b)
                for s, r in zip(samples, ref, strict=True)
                for a, b in zip(s["loglikelihoods"], r["loglikelihoods"], strict=True)
            )
    return out


def run(
    repeats: int = DEFAULT_REPEATS,
    items: int = DEFAULT_ITEMS,
    model: Any = None,
    tok: Any = None,
    out_dir: Path | None = None,
    max_wait_s: float = 5.0,
) -> dict[str, Any]:
    """Measure lm-eval evaluations per method; write `<out_dir>/lm_eval.json`, return it."""
    if model is None or tok is None:
        model, tok = load_default_model()
    select = load_task("copa").splits["select"][:items]
    steerers = fit_steerers(model, tok)
    evaluations: dict[str, Evaluation] = {}

    def score(name: str, lm: Any) -> Callable[[], object]:
        def call() -> object:
            evaluations[name] = evaluate_split(
                lm, select, task_name="bench_copa_select", metric="acc"
            )
            return evaluations[name]

        return call

    def wrapper(steerer: Steerer | None) -> SteeredLM:
        return SteeredLM(model, steerer=steerer, tokenizer=tok, batch_size=BATCH)

    sides: dict[str, Callable[[], object]] = {"unsteered": score("unsteered", wrapper(None))}
    sides.update({name: score(name, wrapper(s)) for name, s in steerers.items()})

    import steering_vectors

    caa_all = steerers["caa_all_positions"]
    vector = steering_vectors.SteeringVector({caa_all.layer: caa_all.vector()}, "decoder_block")
    plain = score("peer_steering_vectors", wrapper(None))

    def peer_steering_vectors() -> object:
        with vector.apply(model, multiplier=1.0, min_token_index=0):
            return plain()

    sides["peer_steering_vectors"] = peer_steering_vectors
    with tempfile.TemporaryDirectory(prefix="sadi-bench-") as tmp:
        steer_file = export_lm_eval_steer(caa_all, model, Path(tmp) / "caa.pt")
        peer = SteeredModel(
            pretrained=str(embedded_path("smollm2-135m-instruct")),
            steer_path=str(steer_file),
            device="cpu",
            batch_size=BATCH,
            dtype="float32",
        )
    sides["peer_lm_eval_steered"] = score("peer_lm_eval_steered", peer)

    timings = interleaved(
        sides, repeats=repeats, warmup=1, max_wait_s=max_wait_s, total_wait_s=60.0
    )
    med = {k: statistics.median(v) for k, v in timings.times.items()}
    steered = [k for k in sides if k != "unsteered"]
    ratios = {k: med[k] / med["unsteered"] for k in steered}
    result = {
        "benchmark": "lm_eval",
        "description": f"lm-eval evaluation of {len(select)} COPA select items "
        f"({2 * len(select)} log-likelihood requests), batch {BATCH}, steered vs unsteered",
        **environment(),
        "items": len(select),
        "repeats": repeats,
        "warmup": 1,
        "times_s": timings.times,
        "medians_s": med,
        "ratios": ratios,
        "paired_ratio_median": {
            k: paired_ratio_median(timings.times[k], timings.times["unsteered"]) for k in steered
        },
        "quiet_only": {k: timings.quiet_ratio(k, "unsteered") for k in steered},
        "targets": TARGETS,
        "meets_target": {k: ratios[k] <= t for k, t in TARGETS.items()},
        "acc": {k: evaluations[k][0]["acc"] for k in sides},
        "same_vector_agreement": agreement(evaluations, SAME_VECTOR),
        "contention": timings.contention(),
    }
    write_result("lm_eval", result, out_dir)
    return result
