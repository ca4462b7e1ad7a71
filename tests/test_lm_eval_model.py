"""The lm-eval wrapper's log-likelihoods equal a by-hand steered forward, at any batch size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lm_eval.api.instance import Instance
from torch import Tensor, nn

from sadi.eval.lm import SteeredLM
from sadi.steerers import SADI
from tests.conftest import PAIRS, byte_tokenizer, make_tiny
from tests.helpers import loglikelihood_requests

MAX_LENGTH = 48
CONTEXTS = [
    "The sky is",
    "Two plus two is",
    "A",
    "Water is wet and the sea is",
    "x" * 70,  # longer than max_length: lm-eval truncates it on the left
    "Question: is fire hot?\nAnswer:",
]
CONTINUATIONS = [" b", " blue", " very long answer here", " no", " yes", "!"]


def requests() -> list[Instance]:
    pairs = [(c, k) for c in CONTEXTS for k in CONTINUATIONS[: 3 + len(c) % 3]]
    # one request whose context+continuation equals another's but with a different split:
    # identical rows with different context boundaries must still be edited correctly
    pairs.append(("The sky is blu", "e"))
    pairs.append(("The sky is", " blue"))
    return loglikelihood_requests(pairs)


def by_hand(model: nn.Module, sadi: SADI, lm: SteeredLM, ctx: str, cont: str) -> float:
    """Steered log-likelihood with the edit applied by a hand-written hook on o_proj."""
    context_enc, cont_enc = lm._encode_pair(ctx, cont)
    row = (context_enc + cont_enc)[-(MAX_LENGTH + 1) :][:-1]
    p = len(row) - len(cont_enc)  # last context token
    state = sadi.fitted_state()
    head_dim = sadi.fitted_shape().head_dim
    handles = []
    for layer in sadi.selected_layers():
        m = state.mask[layer].repeat_interleave(head_dim)

        def pre(module: nn.Module, args: tuple, m: Tensor = m) -> tuple:
            x = args[0].clone()
            a = x[0, p]
            x[0, p] = torch.where(m, a * sadi.strength, a)
            return (x,)

        o_proj = model.model.layers[layer].self_attn.o_proj
        handles.append(o_proj.register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            logp = model(torch.tensor([row])).logits.log_softmax(-1)[0]
    finally:
        for h in handles:
            h.remove()
    picked = logp[p : p + len(cont_enc)].gather(1, torch.tensor(cont_enc)[:, None])
    return float(picked.sum())


@pytest.fixture(scope="module")
def setup() -> tuple[nn.Module, SADI]:
    model = make_tiny("llama")
    sadi = SADI("head", k=3, strength=4.0, progress=False).fit(model, byte_tokenizer(), PAIRS)
    return model, sadi


@pytest.mark.parametrize("batch_size", [1, 4, "auto"])
def test_loglikelihoods_equal_by_hand(setup: tuple, batch_size: int | str) -> None:
    model, sadi = setup
    lm = SteeredLM(
        model,
        steerer=sadi,
        tokenizer=byte_tokenizer(),
        batch_size=batch_size,
        max_length=MAX_LENGTH,
        max_batch_size=8,
        device="cpu",
    )
    reqs = requests()
    assert len(reqs) >= 20
    a = lm._row(*lm._encode_pair(*reqs[-2].arguments))
    b = lm._row(*lm._encode_pair(*reqs[-1].arguments))
    assert a[0] == b[0] and a[2] != b[2], "the last two requests share a row, not a boundary"
    got = [ll for ll, _ in lm.loglikelihood(reqs, disable_tqdm=True)]
    want = [by_hand(model, sadi, lm, *r.arguments) for r in reqs]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), atol=1e-4, rtol=0)
    unsteered = SteeredLM(
        model,
        tokenizer=byte_tokenizer(),
        batch_size=batch_size,
        max_length=MAX_LENGTH,
        device="cpu",
    )
    base = [ll for ll, _ in unsteered.loglikelihood(reqs, disable_tqdm=True)]
    assert not torch.allclose(torch.tensor(got), torch.tensor(base), atol=1e-3)


def test_rolling_and_generate_run_steered(setup: tuple) -> None:
    model, sadi = setup
    lm = SteeredLM(model, steerer=sadi, tokenizer=byte_tokenizer(), batch_size=2, device="cpu")
    rolling = Instance("loglikelihood_rolling", {}, ("Some text to score here.",), 0)
    (score,) = lm.loglikelihood_rolling([rolling], disable_tqdm=True)
    assert isinstance(score, float) and score < 0
    gen = [
        Instance("generate_until", {}, ("The sky is", {"until": ["\n"], "max_gen_toks": 4}), i)
        for i in range(3)
    ]
    outs = lm.generate_until(gen, disable_tqdm=True)
    assert len(outs) == 3 and all(isinstance(o, str) for o in outs)


def test_lm_eval_cli_runs_the_sadi_model(setup: tuple, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """lm-eval's own CLI (`sadi-lm-eval`) evaluates a saved steerer on a task YAML."""
    import json
    import subprocess
    import sys

    import yaml

    from sadi.data.tasks import EXAMPLE_DATA, load_task
    from sadi.eval.harness import task_config, write_split

    model, sadi = setup
    model_dir, steer_dir, task_dir = tmp_path / "model", tmp_path / "steerer", tmp_path / "tasks"
    model.save_pretrained(model_dir)
    byte_tokenizer().save_pretrained(model_dir)
    sadi.save(steer_dir)
    items = load_task("jsonl", path=EXAMPLE_DATA / "tiny_mc.jsonl").splits["select"]
    data = write_split(items, task_dir / "tiny.jsonl")
    (task_dir / "tiny.yaml").write_text(yaml.safe_dump(task_config("sadi_tiny", data, "acc")))
    script = [sys.executable, "-c", "from sadi.eval.cli import cli; cli()"]
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            *script,
            "run",
            "--model",
            "sadi",
            "--tasks",
            "sadi_tiny",
            "--include_path",
            str(task_dir),
            "--device",
            "cpu",
            "--batch_size",
            "4",
            "--model_args",
            f"pretrained={model_dir},steerer={steer_dir}",
            "--output_path",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result_file,) = out.rglob("results_*.json")
    acc = json.loads(result_file.read_text())["results"]["sadi_tiny"]["acc,none"]
    # the same numbers as the Python API on the same model, steerer and items
    lm = SteeredLM(model, steerer=sadi, tokenizer=byte_tokenizer(), batch_size=4, device="cpu")
    from sadi.eval.harness import evaluate_split

    metrics, _ = evaluate_split(lm, items, task_name="sadi_tiny_py", metric="acc")
    assert acc == metrics["acc"]


def test_evaluations_compute_torchs_environment_report_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """lm-eval records torch's environment report (~1 s of subprocesses) on every
    evaluation; sadi discards it, so it is computed once per process, and torch's own
    function is back in place after each evaluation."""
    from torch.utils import collect_env

    import sadi.eval.harness as ev
    from sadi.data.tasks import load_task

    calls: list[int] = []

    def report() -> str:
        calls.append(1)
        return "env"

    monkeypatch.setattr(collect_env, "get_pretty_env_info", report)
    monkeypatch.setattr(ev, "_ENV_INFO", [])
    items = load_task("copa", limit=4, seed=0).splits["select"][:4]
    lm = SteeredLM(make_tiny("llama"), tokenizer=byte_tokenizer(), batch_size=4, device="cpu")
    first, _ = ev.evaluate_split(lm, items, task_name="sadi_env_a", metric="acc")
    again, _ = ev.evaluate_split(lm, items, task_name="sadi_env_b", metric="acc")
    assert len(calls) == 1
    assert first == again
    assert collect_env.get_pretty_env_info is report


# ----- memory is bounded by the batch's tokens, not by its longest item --------------------
@pytest.mark.parametrize("steered", [False, True])
def test_long_items_are_scored_within_the_token_budget(steered: bool) -> None:
    """A batch whose longest row would make it hold more than `batch_tokens` tokens runs in
    parts, and only the positions lm-eval reads go through the vocabulary projection; the
    log-likelihoods are those of one full forward per batch."""
    model = make_tiny("llama")
    sadi = SADI("head", k=3, strength=4.0, progress=False).fit(model, byte_tokenizer(), PAIRS)
    long_context = "word " * 40  # 200 tokens with the byte tokenizer, under max_length 256
    pairs = [(long_context, " yes"), (long_context, " no")]
    pairs += [(c, k) for c in CONTEXTS[:4] for k in CONTINUATIONS[:2]]
    reqs = loglikelihood_requests(pairs)
    seen: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    def record(module: nn.Module, args: tuple, kwargs: dict, out: object) -> None:
        seen.append((tuple(args[0].shape), tuple(out.logits.shape)))  # type: ignore[attr-defined]

    kw = dict(tokenizer=byte_tokenizer(), batch_size=16, steerer=sadi if steered else None)
    unbounded = SteeredLM(model, batch_tokens=10**9, **kw)
    unbounded._tail_ok = False  # one full [batch, length, vocab] forward per batch
    want = unbounded.loglikelihood(reqs, disable_tqdm=True)
    handle = model.register_forward_hook(record, with_kwargs=True)
    try:
        lm = SteeredLM(model, batch_tokens=256, **kw)
        got = lm.loglikelihood(reqs, disable_tqdm=True)
    finally:
        handle.remove()
    torch.testing.assert_close(
        torch.tensor([g[0] for g in got]), torch.tensor([w[0] for w in want]), atol=1e-5, rtol=0
    )
    assert [g[1] for g in got] == [w[1] for w in want]
    scoring = [(i, o) for i, o in seen if i[0] > 0 and i[1] > 8]  # the probe rows are tiny
    assert lm.split_batches >= 1 and lm._tail_ok
    for (rows, length), (_, _kept, vocab) in scoring:
        assert rows * length <= 256 or rows == 1
        assert vocab == 260
    # the 200-token rows project only the positions of their continuations, not 200
    assert max(kept for (_, length), (_, kept, _) in scoring if length > 150) <= 5


@pytest.mark.slow
def test_a_50000_character_item_stays_within_a_few_gigabytes(tmp_path: Path) -> None:
    """The reported case on SmolLM2: one report item with a 50,000-character context among
    short ones, batch size 16. Peak resident memory of the scoring process stays bounded
    (it reached 19.9 of 23 GB before the token budget)."""
    script = tmp_path / "score.py"
    script.write_text(
        "import resource, sys\n"
        "from lm_eval.api.instance import Instance\n"
        "from sadi.eval.lm import SteeredLM\n"
        "from sadi.core.models import load_model\n"
        "model, tok = load_model()\n"
        "pairs = [('word ' * 10000, ' yes'), ('word ' * 10000, ' no')]\n"
        "pairs += [(f'Item {i} is', ' fine') for i in range(30)]\n"
        "reqs = [Instance('loglikelihood', {}, p, i) for i, p in enumerate(pairs)]\n"
        "out = SteeredLM(model, tokenizer=tok, batch_size=16).loglikelihood(reqs)\n"
        "assert len(out) == len(pairs)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)\n"
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak_mb = int(proc.stdout.strip().splitlines()[-1])
    assert peak_mb < 6000, peak_mb
    assert "longer than max_length=8192" in proc.stderr  # said, not silent


def test_an_hflm_without_the_attributes_sadi_reads_fails_loudly() -> None:
    """Were lm-eval to rename HFLM's batch size, autocast dtype or softmax dtype, SteeredLM
    stops at once instead of silently losing its memory bound, mixed precision or float32
    log-probabilities."""
    from types import SimpleNamespace

    from sadi.eval.lm import _check_hflm_attributes

    full = {"batch_size_per_gpu": 16, "mixed_precision_dtype": None, "softmax_dtype": None}
    _check_hflm_attributes(SimpleNamespace(**full))
    for name in full:
        lacking = SimpleNamespace(**{k: v for k, v in full.items() if k != name})
        with pytest.raises(RuntimeError, match=rf"no \['{name}'\].*constraints.txt"):
            _check_hflm_attributes(lacking)
