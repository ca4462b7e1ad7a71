"""Scoring a split through lm-eval: the labelled choice's normalised probability (p_label)."""

from __future__ import annotations

import math

import pytest

from sadi.data.tasks import load_task
from sadi.eval.harness import evaluate_split
from sadi.eval.lm import SteeredLM
from sadi.eval.metrics import label_probability
from tests.conftest import byte_tokenizer, make_tiny


def test_label_probability_is_the_softmax_over_choices() -> None:
    lls = [-3.0, -1.0, -2.0]
    z = sum(math.exp(x) for x in lls)
    assert label_probability(lls, 1) == pytest.approx(math.exp(-1.0) / z, abs=1e-12)
    # stable far from zero, where exp underflows
    assert label_probability([-2000.0, -2001.0], 0) == pytest.approx(1 / (1 + math.exp(-1)))
    assert sum(label_probability(lls, i) for i in range(3)) == pytest.approx(1.0)


@pytest.mark.parametrize("task", ["copa", "mmlu", "caa_refusal"])
def test_p_label_per_item_and_its_mean_come_from_lm_evals_log_likelihoods(task: str) -> None:
    items = load_task(task, limit=6, seed=0).splits["select"][:6]
    lm = SteeredLM(make_tiny("llama"), tokenizer=byte_tokenizer(), batch_size=4, device="cpu")
    metrics, samples = evaluate_split(lm, items, task_name=f"p_{task}", metric="acc")
    values = []
    for s in samples:
        lls = s["loglikelihoods"]
        want = math.exp(lls[s["label"]]) / sum(math.exp(x) for x in lls)
        assert s["p_label"] == pytest.approx(want, rel=1e-9)
        # the argmax rate and p_label agree on which side of 1/n an item falls
        assert (s["acc"] == 1.0) == (
            s["p_label"] == max(label_probability(lls, i) for i in range(len(lls)))
        )
        values.append(s["p_label"])
    assert metrics["p_label"] == pytest.approx(sum(values) / len(values))
    sd = math.sqrt(sum((v - metrics["p_label"]) ** 2 for v in values) / (len(values) - 1))
    assert metrics["p_label_stderr"] == pytest.approx(sd / math.sqrt(len(values)))


def test_mc2_tasks_report_mc2_and_the_true_answers_not_p_label() -> None:
    items = load_task("truthfulqa_mc2", limit=3, seed=0).splits["select"][:3]
    lm = SteeredLM(make_tiny("llama"), tokenizer=byte_tokenizer(), batch_size=4, device="cpu")
    metrics, samples = evaluate_split(lm, items, task_name="p_mc2", metric="mc2")
    assert "mc2" in metrics and "p_label" not in metrics
    assert all("p_label" not in s for s in samples)
    # each sample says which answers are true, and its mc2 is the mass on exactly those
    assert [s["correct"] for s in samples] == [list(i.correct) for i in items]
    for s in samples:
        p = [math.exp(v) for v in s["loglikelihoods"]]
        assert s["mc2"] == pytest.approx(sum(p[i] for i in s["correct"]) / sum(p))


def test_an_overflowed_half_model_fails_loudly_and_bfloat16_scores() -> None:
    """SmolLM2's residual stream reaches ~24000 in float16 (its range ends at 65504): SADI
    scaling it by 3 overflows to NaN log-likelihoods, whose argmax would be a silent wrong
    accuracy. The split fails naming the items, the dtype and the fix, and bfloat16 (float32's
    range) scores the same steering."""
    from sadi.core.models import DEFAULT_MODEL, load_model
    from sadi.data.pairs import make_pairs
    from sadi.eval.metrics import NonFiniteScores
    from sadi.steerers.sadi import SADI

    task = load_task("copa")
    pairs = make_pairs(task.splits["fit"], n_pairs=12, seed=0)
    items = task.splits["select"][:4]
    for dtype in ("float16", "bfloat16"):
        model, tok = load_model(DEFAULT_MODEL, dtype=dtype)
        st = SADI(component="residual", k=32, strength=3.0, progress=False).fit(model, tok, pairs)
        lm = SteeredLM(model, steerer=st, tokenizer=tok, batch_size=4, progress=False)
        if dtype == "float16":
            with pytest.raises(NonFiniteScores, match=r"4 of 4 items .* overflowed float16"):
                evaluate_split(lm, items, task_name="overflow", metric="acc")
        else:
            _, samples = evaluate_split(lm, items, task_name="overflow", metric="acc")
            assert all(math.isfinite(x) for s in samples for x in s["loglikelihoods"])


def test_generation_stops_at_nan_logits_naming_the_overflow() -> None:
    """Greedy decoding would turn NaN logits into arbitrary tokens without a word."""
    from lm_eval.api.instance import Instance

    from sadi.core.models import DEFAULT_MODEL, load_model
    from sadi.data.pairs import make_pairs
    from sadi.eval.metrics import NonFiniteScores
    from sadi.steerers.sadi import SADI

    model, tok = load_model(DEFAULT_MODEL, dtype="float16")
    pairs = make_pairs(load_task("copa").splits["fit"], n_pairs=12, seed=0)
    st = SADI(component="residual", k=32, strength=3.0, progress=False).fit(model, tok, pairs)
    req = Instance("generate_until", {}, ("Once upon a time", {"max_gen_toks": 4}), 0)
    plain = SteeredLM(model, tokenizer=tok, batch_size=1, progress=False)
    assert plain.generate_until([req])[0]  # unsteered float16 generates
    steered = SteeredLM(model, steerer=st, tokenizer=tok, batch_size=1, progress=False)
    with pytest.raises(NonFiniteScores, match="NaN logits .* overflowed float16"):
        steered.generate_until([req])
