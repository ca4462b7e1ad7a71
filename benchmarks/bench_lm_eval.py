"""Steered vs unsteered lm-eval evaluation of COPA's select split, per method, interleaved.

Every side scores the same items through lm-eval (`sadi.evaluation.evaluate_split`) with the
embedded SmolLM2; the ratio of each steered side's median to the unsteered median is the
figure. Targets: SADI online <= 1.05, SADI faithful <= 1.6. ITI and CAA are reported against
the same baseline, and so are two peers steering with the same CAA vector at all positions:
the `steering-vectors` library (its `apply` around a plain HFLM) and lm-eval's own `steered`
model (reading the vector exported by `sadi.interop`).
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lm_eval.models.hf_steered import SteeredModel

from benchmarks.common import environment, interleaved, load_default_model, write_result
from sadi.evaluation import evaluate_split
from sadi.interop import export_lm_eval_steer
from sadi.lm_eval_model import SteeredLM
from sadi.models import embedded_path
from sadi.pairs import make_pairs
from sadi.steerers import CAA, ITI, SADI, Steerer
from sadi.tasks import load_task

TARGETS = {"sadi_online": 1.05, "sadi_faithful": 1.6}
BATCH = 16


def run(
    repeats: int = 3,
    items: int = 300,
    model: Any = None,
    tok: Any = None,
    out_dir: Path | None = None,
    max_wait_s: float = 5.0,
) -> dict[str, Any]:
    """Measure lm-eval evaluations per method; write `<out_dir>/lm_eval.json`, return it."""
    if model is None or tok is None:
        model, tok = load_default_model()
    task = load_task("copa")
    select = task.splits["select"][:items]
    pairs = make_pairs(task.splits["fit"], n_pairs=150, seed=0)
    steerers: dict[str, Steerer] = {
        "sadi_online": SADI("head", k=4, strength=5.0, progress=False).fit(model, tok, pairs),
    }
    steerers["sadi_faithful"] = SADI("head", k=4, strength=5.0, mode="faithful").adopt(
        steerers["sadi_online"]
    )
    steerers["iti"] = ITI(k=13, alpha=15.0, progress=False).fit(model, tok, pairs)
    caa = CAA(layer=15, multiplier=1.0, progress=False).fit(model, tok, pairs)
    steerers["caa"] = caa
    caa_all = caa.with_params(positions="all")
    steerers["caa_all_positions"] = caa_all

    def score(lm: Any) -> Callable[[], object]:
        return lambda: evaluate_split(lm, select, task_name="bench_copa_select", metric="acc")

    def lm(steerer: Steerer | None) -> SteeredLM:
        return SteeredLM(model, steerer=steerer, tokenizer=tok, batch_size=BATCH)

    sides: dict[str, Callable[[], object]] = {"unsteered": score(lm(None))}
    sides.update({name: score(lm(s)) for name, s in steerers.items()})

    import steering_vectors

    vector = steering_vectors.SteeringVector({caa_all.layer: caa_all.vector()}, "decoder_block")
    plain = lm(None)

    def peer_steering_vectors() -> object:
        with vector.apply(model, multiplier=1.0, min_token_index=0):
            return evaluate_split(plain, select, task_name="bench_copa_select", metric="acc")

    sides["peer_steering_vectors"] = peer_steering_vectors
    tmp = Path(tempfile.mkdtemp(prefix="sadi-bench-"))
    steer_file = export_lm_eval_steer(caa_all, model, tmp / "caa.pt")
    peer = SteeredModel(
        pretrained=str(embedded_path("smollm2-135m-instruct")),
        steer_path=str(steer_file),
        device="cpu",
        batch_size=BATCH,
        dtype="float32",
    )
    sides["peer_lm_eval_steered"] = score(peer)

    timings = interleaved(
        sides, repeats=repeats, warmup=1, max_wait_s=max_wait_s, total_wait_s=60.0
    )
    med = {k: statistics.median(v) for k, v in timings.times.items()}
    ratios = {k: med[k] / med["unsteered"] for k in sides if k != "unsteered"}
    result = {
        "benchmark": "lm_eval",
        "description": f"lm-eval evaluation of {len(select)} COPA select items "
        f"({2 * len(select)} log-likelihood requests), batch {BATCH}, steered vs unsteered",
        **environment(),
        "repeats": repeats,
        "times_s": timings.times,
        "medians_s": med,
        "ratios": ratios,
        "targets": TARGETS,
        "meets_target": {k: ratios[k] <= t for k, t in TARGETS.items()},
        "contention": timings.contention(),
    }
    write_result("lm_eval", result, out_dir)
    return result
