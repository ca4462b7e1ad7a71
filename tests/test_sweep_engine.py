"""The sweep engine (shared-prefix scoring) gives the per-point path's numbers, computes each
prefix once, resumes from what it wrote, and gives all-position methods their own steered
prefixes (shared by an item's choices, never across points)."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import pytest
from lm_eval.api.instance import Instance
from lm_eval.api.task import ConfigurableTask
from torch import nn

from sadi.data.tasks import TASKS, load_task
from sadi.eval.harness import evaluate_split, task_config, write_split
from sadi.eval.lm import SteeredLM
from sadi.steerers import CAA, SADI, AUSteer, Steerer
from sadi.sweep import PrefixScorer, SweepLM, SweepScores, split_request
from sadi.sweep.plan import condition_name
from tests.conftest import PAIRS, TINY, byte_tokenizer, make_tiny
from tests.test_one_model import METHODS, fitted

MAX_LENGTH = 96  # bytes: long contexts (BoolQ passages, CAA prompts) are cut on the left
TASK_CASES = [(name, "lm_eval") for name in TASKS] + [("copa", "ab"), ("boolq", "ab")]
_MODEL: dict[str, tuple[nn.Module, dict[str, Steerer | None]]] = {}


def model_and_conditions() -> tuple[nn.Module, dict[str, Steerer | None]]:
    """A tiny Llama; the baseline, faithful SADI (clean values from the prefix pass) at two
    strengths of one fit, and CAA on the response."""
    if not _MODEL:
        model, tok = make_tiny("llama"), byte_tokenizer()
        sadi = SADI("head", k=3, strength=4.0, mode="faithful", progress=False)
        sadi.fit(model, tok, PAIRS)
        caa = CAA(layer=1, multiplier=3.0, progress=False).fit(model, tok, PAIRS)
        conds: dict[str, Steerer | None] = {
            "baseline": None,
            "sadi4": sadi,
            "sadi-2": sadi.with_params(strength=-2.0),
            "caa": caa,
        }
        _MODEL["llama"] = (model, conds)
    return _MODEL["llama"]


def task_requests(name: str, fmt: str, n: int = 3) -> tuple[list[Instance], object]:
    """The log-likelihood requests lm-eval builds for `n` select items of a task."""
    task = load_task(name, format=fmt, limit=n, seed=0)
    items = task.splits["select"][:n]
    tmp = Path(tempfile.mkdtemp(prefix="sadi-test-"))
    lm_task = ConfigurableTask(
        config=task_config(f"t_{name}", write_split(items, tmp / "x.jsonl"), task.metric)
    )
    lm_task.build_all_requests(rank=0, world_size=1)
    return [i for i in lm_task.instances], task


def close(a: list[tuple[float, bool]], b: list[tuple[float, bool]], tol: float = 1e-5) -> bool:
    return len(a) == len(b) and all(
        abs(x[0] - y[0]) < tol and x[1] == y[1] for x, y in zip(a, b, strict=True)
    )


def lm(
    model: nn.Module, st: Steerer | None, batch_size: int | str, scores: SweepScores | None = None
) -> SteeredLM:
    kw = {
        "tokenizer": byte_tokenizer(),
        "batch_size": batch_size,
        "max_length": MAX_LENGTH,
        "device": "cpu",
    }
    if scores is None:
        return SteeredLM(model, steerer=st, **kw)
    name = next(n for n, c in scores.conditions.items() if c is st)
    return SweepLM(model, scores=scores, condition=name, steerer=st, **kw)


@pytest.mark.parametrize("batch_size", [1, 4, "auto"])
def test_engine_equals_the_per_point_path_on_every_task(batch_size: int | str) -> None:
    """Every registered task's requests, all sent at once (as simple_evaluate does)."""
    model, conds = model_and_conditions()
    requests: list[Instance] = []
    owner: list[tuple[str, str, int]] = []  # (task, format, doc) of each request
    for name, fmt in TASK_CASES:
        reqs, _ = task_requests(name, fmt)
        requests += reqs
        owner += [(name, fmt, r.doc_id) for r in reqs]
    probe = lm(model, None, batch_size)
    tokens = [probe._encode_pair(*r.args) for r in requests]
    truncated = {
        o[0] for o, (c, k) in zip(owner, tokens, strict=True) if len(c) + len(k) > MAX_LENGTH + 1
    }
    assert len(truncated) >= 3, "left truncation must be exercised"
    scores = SweepScores(model, conds, batch_size=batch_size)
    got_all = {}
    for cond, st in conds.items():
        want = lm(model, st, batch_size).loglikelihood(requests)
        got = got_all[cond] = lm(model, st, batch_size, scores).loglikelihood(requests)
        for name, fmt in TASK_CASES:
            idx = [i for i, o in enumerate(owner) if o[:2] == (name, fmt)]
            worst = max(abs(want[i][0] - got[i][0]) for i in idx)
            assert worst < 1e-4, (name, fmt, cond, worst)
            assert [want[i][1] for i in idx] == [got[i][1] for i in idx], (name, fmt, cond)
            # per-item predictions: the argmax over each item's choices
            for doc in {owner[i][2] for i in idx}:
                mine = [i for i in idx if owner[i][2] == doc]
                assert max(mine, key=lambda i: want[i][0]) == max(mine, key=lambda i: got[i][0])
    # each steered condition really moves the scores of every task
    for name, fmt in TASK_CASES:
        idx = [i for i, o in enumerate(owner) if o[:2] == (name, fmt)]
        for cond in ("sadi4", "caa"):
            assert any(abs(got_all[cond][i][0] - got_all["baseline"][i][0]) > 1e-3 for i in idx)


def test_metrics_and_samples_are_lm_evals_own(tmp_path: Path) -> None:
    """Through evaluate_split (lm-eval's request building, metrics and aggregation)."""
    model, conds = model_and_conditions()
    for name in ("boolq", "truthfulqa_mc2", "copa"):
        task = load_task(name, limit=4, seed=0)
        items = task.splits["select"][:4]
        scores = SweepScores(model, conds, directory=tmp_path / name)
        st = conds["sadi4"]
        want_m, want_s = evaluate_split(
            lm(model, st, 4), items, task_name=f"a_{name}", metric=task.metric
        )
        got_m, got_s = evaluate_split(
            lm(model, st, 4, scores), items, task_name=f"b_{name}", metric=task.metric
        )
        assert got_m.keys() == want_m.keys()
        for key in want_m:
            assert abs(got_m[key] - want_m[key]) < 1e-4, (name, key)
        assert [s["prediction"] for s in got_s] == [s["prediction"] for s in want_s]


@pytest.mark.parametrize("family", sorted(TINY))
def test_engine_equals_the_per_point_path_for_every_method(family: str) -> None:
    """Methods on shared unsteered prefixes and those with their own steered prefixes
    (AUSteer, positions="all") alike."""
    from tests.test_lm_eval_model import requests

    reqs = requests()  # includes a context longer than max_length (left truncation)
    for method in METHODS:
        model, st = fitted(family, method)
        scores = SweepScores(model, {"s": st})
        kw = {"tokenizer": byte_tokenizer(), "batch_size": 4, "device": "cpu", "max_length": 48}
        want = SteeredLM(model, steerer=st, **kw).loglikelihood(reqs)
        got = SweepLM(model, scores=scores, condition="s", steerer=st, **kw).loglikelihood(reqs)
        worst = max(abs(a[0] - b[0]) for a, b in zip(want, got, strict=True))
        assert worst < 1e-4, (family, method, worst)
        assert [a[1] for a in want] == [b[1] for b in got]


def test_each_prefix_is_computed_once_for_all_conditions() -> None:
    model, conds = model_and_conditions()
    requests, _ = task_requests("mmlu", "lm_eval", n=5)
    tokens = [lm(model, None, 4)._encode_pair(*r.args) for r in requests]
    rows = [split_request(c, k, MAX_LENGTH) for c, k in tokens]
    heads = {r.head for r in rows}
    assert len(heads) == 5 < len(rows)  # four choices share each context
    one = SweepScores(model, {"baseline": None})
    one.get("baseline", tokens, MAX_LENGTH)
    many = SweepScores(model, conds)
    many.get("sadi4", tokens, MAX_LENGTH)
    for s in (one, many):
        # a head's last position is recomputed by each condition's suffix; all others once
        assert s.scorer.counts["prefix_tokens"] == sum(len(h) for h in heads)
        assert s.scorer.counts["prefix_forwards"] == 1
    suffix = sum(len(r.suffix) for r in {(r.head, r.suffix): r for r in rows}.values())
    assert many.scorer.counts["suffix_tokens"] == len(conds) * suffix
    assert suffix < sum(len(r.head) + len(r.suffix) - 1 for r in rows) / 4


def test_a_beginning_every_context_shares_runs_once_with_the_same_scores() -> None:
    """Contexts that begin alike (an instruction, a few-shot prompt, a system prompt): the
    shared tokens run once per chunk, every condition's scores stay the per-point path's."""
    model, conds = model_and_conditions()
    lead = "The following are questions about the world.\n\n"  # 47 bytes in common
    items = ["Is the sky blue?", "Why?", "Name a colour of the sea at night, please.", "A"]
    requests = [
        Instance("loglikelihood", {}, (lead + q, f" {a}"), idx=i)
        for i, q in enumerate(items)
        for a in ("yes", "no", "maybe so")
    ]
    tokens = [lm(model, None, 4)._encode_pair(*r.args) for r in requests]
    heads = {split_request(c, k, MAX_LENGTH * 2).head for c, k in tokens}
    common = min(len(h) for h in heads) - 1
    common = next((i for i in range(common) if len({h[i] for h in heads}) > 1), common)
    assert common >= 40
    shared = SweepScores(model, conds, shared_min=8)
    alone = SweepScores(model, conds, shared_min=0)
    for name, cond in conds.items():
        got = shared.get(name, tokens, MAX_LENGTH * 2)
        assert close(got, alone.get(name, tokens, MAX_LENGTH * 2), tol=1e-4), name
        per_point = SteeredLM(
            model,
            steerer=cond,
            tokenizer=byte_tokenizer(),
            batch_size=4,
            device="cpu",
            max_length=MAX_LENGTH * 2,
        )
        assert close(got, per_point.loglikelihood(requests), tol=1e-4), name
    counts, plain = shared.scorer.counts, alone.scorer.counts
    assert counts["shared_tokens"] == common * (len(heads) - 1)
    assert counts["prefix_tokens"] == plain["prefix_tokens"] - counts["shared_tokens"]
    assert counts["prefix_forwards"] == plain["prefix_forwards"] + 1  # the beginning, once
    with pytest.raises(ValueError, match="shared_min=-1"):
        SweepScores(model, conds, shared_min=-1)


def test_a_sweep_too_large_for_memory_is_chunked_with_the_same_scores() -> None:
    model, conds = model_and_conditions()
    requests, _ = task_requests("boolq", "lm_eval", n=6)
    tokens = [lm(model, None, 4)._encode_pair(*r.args) for r in requests]
    big = SweepScores(model, conds)
    whole = big.get("sadi4", tokens, MAX_LENGTH)
    tiny = SweepScores(model, conds, cache_mb=0.05, logits_mb=0.01)
    assert close(tiny.get("sadi4", tokens, MAX_LENGTH), whole)
    heads = {split_request(c, k, MAX_LENGTH).head for c, k in tokens}
    assert tiny.scorer.counts["prefix_forwards"] == len(heads)  # one head per chunk
    assert tiny.scorer.counts["suffix_forwards"] > 6 * len(conds)
    # the bound holds wherever one head fits in it: a chunk never holds two heads past it
    one_head = max(len(h) for h in heads) * tiny.scorer.kv_bytes_per_token()
    assert tiny.scorer.counts["max_prefix_cache_bytes"] <= max(one_head, tiny.scorer.cache_bytes)
    assert 0 < big.scorer.counts["max_prefix_cache_bytes"] <= big.scorer.cache_bytes


def test_heads_of_a_chunk_run_in_micro_batches_with_the_same_scores() -> None:
    """Heads of many lengths in one chunk run in micro-batches each padded to its own
    longest head; their caches, laid side by side, give every condition the same scores."""
    model, conds = model_and_conditions()
    requests, _ = task_requests("copa", "lm_eval", n=8)  # contexts of different lengths
    tokens = [lm(model, None, 4)._encode_pair(*r.args) for r in requests]
    heads = sorted({split_request(c, k, MAX_LENGTH).head for c, k in tokens}, key=len)
    assert len({len(h) for h in heads}) > 2
    one = SweepScores(model, conds, prefix_tokens=10**6)
    single = SweepScores(model, conds, prefix_tokens=1)  # one head per forward
    pairs = SweepScores(model, conds, prefix_tokens=2 * len(heads[-1]))  # some two at a time
    for name in conds:
        want = one.get(name, tokens, MAX_LENGTH)
        # batch composition changes float rounding only (summed log-likelihoods of ~-200)
        assert close(single.get(name, tokens, MAX_LENGTH), want, tol=1e-4)
        assert close(pairs.get(name, tokens, MAX_LENGTH), want, tol=1e-4)
    assert one.scorer.counts["prefix_forwards"] == 1
    assert single.scorer.counts["prefix_forwards"] == len(heads)
    assert 1 < pairs.scorer.counts["prefix_forwards"] < len(heads)
    for s in (single, pairs):
        assert s.scorer.counts["prefix_tokens"] == one.scorer.counts["prefix_tokens"]
    with pytest.raises(ValueError, match="prefix_tokens=0"):
        SweepScores(model, conds, prefix_tokens=0)


def test_a_killed_sweep_resumes_from_the_chunks_written(tmp_path: Path) -> None:
    model, conds = model_and_conditions()
    requests, _ = task_requests("copa", "lm_eval", n=6)
    tokens = [lm(model, None, 4)._encode_pair(*r.args) for r in requests]
    fresh = {c: SweepScores(model, conds).get(c, tokens, MAX_LENGTH) for c in conds}

    first = SweepScores(model, conds, directory=tmp_path, batch_size=2)  # 3 chunks
    real = first.scorer.score_chunk
    calls = []

    def dying(rows, conditions):  # type: ignore[no-untyped-def]
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        calls.append(1)
        return real(rows, conditions)

    first.scorer.score_chunk = dying  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        first.get("sadi4", tokens, MAX_LENGTH)
    written = sorted(p.name for p in tmp_path.glob("*/sadi4/chunk_*.json"))
    assert written == ["chunk_0.json", "chunk_1.json"]

    again = SweepScores(model, conds, directory=tmp_path, batch_size=2)
    got = {c: again.get(c, tokens, MAX_LENGTH) for c in conds}
    assert again.scorer.counts["prefix_forwards"] == 1  # only the chunk not yet written
    for c in conds:
        assert close(got[c], fresh[c], tol=1e-4)  # other batches: float rounding
    later = SweepScores(model, conds, directory=tmp_path)
    assert later.get("caa", tokens, MAX_LENGTH) == got["caa"]
    assert later.scorer.counts["prefix_forwards"] == 0  # another job: all from disk


def test_all_position_methods_run_their_own_steered_prefix() -> None:
    """AUSteer edits every position: each of its conditions runs its heads once under its
    own steering (shared by an item's choices); the unsteered prefix still serves the rest."""
    model, st = fitted("llama", "austeer-head")
    assert isinstance(st, AUSteer)
    assert "edits positions='all'" in (st.prefix_unshared() or "")
    _, caa_all = fitted("llama", "caa-all")
    assert caa_all.prefix_unshared() is not None
    other = st.with_params(alpha=-3.0)
    requests, _ = task_requests("mmlu", "lm_eval", n=4)
    tokens = [lm(model, None, 4)._encode_pair(*r.args) for r in requests]
    heads = {split_request(c, k, MAX_LENGTH).head for c, k in tokens}
    conds: dict[str, Steerer | None] = {"baseline": None, "a": st, "b": other, "caa": caa_all}
    scores = SweepScores(model, conds)
    for name, cond in conds.items():
        want = lm(model, cond, 4).loglikelihood(requests)
        assert close(scores.get(name, tokens, MAX_LENGTH), want, tol=1e-4), name
    counts = scores.scorer.counts
    # one unsteered pass (baseline) and one steered pass per all-position condition
    assert counts["prefix_forwards"] == 4
    assert counts["prefix_tokens"] == 4 * sum(len(h) for h in heads)
    assert len(heads) < len(tokens)  # the four choices of an item share its steered prefix
    base = scores.get("baseline", tokens, MAX_LENGTH)
    assert any(abs(x[0] - y[0]) > 1e-3 for x, y in zip(base, scores.get("a", tokens, MAX_LENGTH)))


def test_condition_names_identify_parameters_not_number_types() -> None:
    _, conds = model_and_conditions()
    sadi = conds["sadi4"]
    assert isinstance(sadi, SADI)
    assert condition_name(sadi.with_params(strength=4)) == condition_name(sadi)
    assert condition_name(sadi.with_params(strength=5.0)) != condition_name(sadi)
    assert condition_name(None) == "baseline"


def test_bad_engine_options_name_the_value() -> None:
    model, _ = model_and_conditions()
    with pytest.raises(ValueError, match="batch_size=0"):
        PrefixScorer(model, batch_size=0)
    with pytest.raises(ValueError, match="cache_mb=0"):
        PrefixScorer(model, cache_mb=0)
    with pytest.raises(ValueError, match="no context within max_length"):
        split_request([1, 2], [3] * 10, max_length=5)


def _sweep(model_dir: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    from tests.test_sweep import sweep_command

    return subprocess.run(
        sweep_command(model_dir, tmp, *extra), capture_output=True, text=True, timeout=900, cwd=tmp
    )


def _samples(sweep: Path) -> dict[str, list[float]]:
    out = {}
    for f in sorted(sweep.glob("*/samples_jsonl_select.jsonl")):
        rows = [json.loads(line) for line in f.read_text().splitlines()]
        out[f.parent.name] = [ll for r in rows for ll in r["loglikelihoods"]]
    return out


@pytest.mark.slow
def test_a_hydra_sweep_uses_the_engine_and_gives_the_per_point_numbers(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """`-m` over SADI's strength: the points of one fit are scored together by the first,
    each still gets its own results; the numbers equal a sweep.engine=false sweep's."""
    grid = ["intervention.k=3", "intervention.strength=2,4,6", "intervention.mode=faithful"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    engine = _sweep(tiny_model_dir, tmp_path / "a", *grid)
    assert engine.returncode == 0, engine.stderr[-3000:]
    assert engine.stderr.count("3 point(s) of one fit and the baseline") == 3
    per_point = _sweep(tiny_model_dir, tmp_path / "b", *grid, "sweep.engine=false")
    assert per_point.returncode == 0, per_point.stderr[-3000:]
    a, b = _samples(tmp_path / "a" / "sweep"), _samples(tmp_path / "b" / "sweep")
    assert (
        len(a) == 3 and a.keys() == {k.replace(",sweep.engine=false", "") for k in b} or len(b) == 3
    )
    for (_, x), (_, y) in zip(sorted(a.items()), sorted(b.items()), strict=True):
        assert max(abs(u - v) for u, v in zip(x, y, strict=True)) < 1e-4
    results = [json.loads(p.read_text()) for p in (tmp_path / "a" / "sweep").glob("*/results.json")]
    assert all(r["sweep_engine"]["used"] and r["sweep_engine"]["points"] == 3 for r in results)
    # the first point computed every condition; the two others read them from disk
    conditions = list((tmp_path / "a" / "cache" / "sweeps").glob("*/*/*/chunk_0.json"))
    assert len(conditions) == 4  # baseline + 3 strengths


@pytest.mark.slow
def test_a_sweep_mixing_methods_scores_each_on_its_prefixes(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    proc = _sweep(tiny_model_dir, tmp_path, "intervention=sadi,austeer", "intervention.k=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "austeer edits positions='all'" in proc.stderr
    assert "each point runs its own steered prefix" in proc.stderr
    engines = {
        r["config"]["intervention"]["name"]: r["sweep_engine"]
        for r in (json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("*/results.json"))
    }
    assert engines["sadi"]["used"] and engines["sadi"]["own_prefix_points"] == 0
    assert engines["austeer"]["used"] and engines["austeer"]["own_prefix_points"] == 1


def test_auto_budgets_come_from_free_gpu_memory_and_size_the_chunks() -> None:
    """`cache_mb=auto`: on CUDA a share of the free device memory (what
    `torch.cuda.mem_get_info` reports, passed in here), on the CPU the fixed 256/128 MB;
    given megabytes are taken as they are. A smaller budget gives more, smaller chunks."""
    import torch

    from sadi.sweep.prefix import AUTO_SHARE, memory_budget

    gib = 2**30
    cache, logits = memory_budget(torch.device("cuda", 0), "auto", "auto", free_bytes=30 * gib)
    assert cache == pytest.approx(AUTO_SHARE * 20 * gib) and logits == pytest.approx(
        AUTO_SHARE * 10 * gib
    )
    small = memory_budget(torch.device("cuda", 0), "auto", "auto", free_bytes=gib)
    assert small[0] < cache and small[1] < logits
    assert memory_budget(torch.device("cpu"), "auto", "auto") == (256 * 2**20, 128 * 2**20)
    assert memory_budget(torch.device("cuda", 0), 64, "auto", free_bytes=gib)[0] == 64 * 2**20
    with pytest.raises(ValueError, match="logits_mb='lots'"):
        memory_budget(torch.device("cpu"), 64, "lots")

    model, _ = model_and_conditions()
    requests, _ = task_requests("boolq", "lm_eval", n=6)
    rows = [split_request(*lm(model, None, 4)._encode_pair(*r.args), MAX_LENGTH) for r in requests]
    scorer = PrefixScorer(model)
    per_head = max(len(r.head) for r in rows) * scorer.kv_bytes_per_token()
    roomy, tight = PrefixScorer(model), PrefixScorer(model)
    roomy.cache_bytes = 64 * per_head  # as a large free memory would give
    tight.cache_bytes = per_head  # one head per chunk
    assert len(roomy.chunks(rows)) == 1 < len(tight.chunks(rows))
