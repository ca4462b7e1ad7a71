"""Helpers shared by the steerer tests: forwards, steered forwards, activation recording,
teacher-forced generation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.instance import Instance
from torch import Tensor, nn
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedTokenizerBase

from sadi.core.activations import EncodedBatch, encode, position_ids
from sadi.core.architectures import architecture_of, model_shape, site
from sadi.core.hooks import LayerHook, hooked
from sadi.data.tasks import EXAMPLE_DATA
from sadi.eval.lm import SteeredLM
from sadi.serve.process import serving  # noqa: F401 (the tests' server)
from sadi.steerers import Steerer


def tiny_run(model_dir: Path) -> list[str]:
    """The overrides of a quiet run on a tiny random model (its directory) and the project's
    own tiny JSONL task with 8 pairs, no tracker."""
    return [
        f"model.source={model_dir}",
        "model.name=tiny",
        "task=jsonl",
        f"task.path={EXAMPLE_DATA / 'tiny_mc.jsonl'}",
        "task.n_pairs=8",
        "logger=none",
        "progress=false",
    ]


def run_tiny(model_dir: Path, out: Path, *extra: str) -> dict[str, Any]:
    """One run (`sadi.pipeline.runner.run`) of `tiny_run` with `extra` overrides, writing to
    `out` (its cache beside it); returns its results.json."""
    from hydra import compose, initialize_config_dir

    from sadi.pipeline.context import RunContext
    from sadi.pipeline.runner import run
    from sadi.run import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                *tiny_run(model_dir),
                f"paths.cache_dir={out.parent / 'cache'}",
                f"paths.output_dir={out}",
                *extra,
            ],
        )
    run(RunContext.build(cfg))
    return json.loads((out / "results.json").read_text())  # type: ignore[no-any-return]


PROMPTS = ["The sky is", "Water is wet and", "Hi"]
CONTS = [" blue today", " cold", " there friend"]


def forward(model: nn.Module, batch: EncodedBatch) -> Tensor:
    kwargs = {"attention_mask": batch.attention_mask}
    if architecture_of(model).family != "bloom":  # BLOOM uses ALiBi, no position ids
        kwargs["position_ids"] = position_ids(batch.attention_mask)
    with torch.no_grad():
        return model(batch.input_ids, **kwargs).logits  # type: ignore[no-any-return]


def steered(model: nn.Module, steerer: Steerer, batch: EncodedBatch) -> Tensor:
    with steerer.apply(model) as handle:
        handle.set_layout(batch.layout)
        return forward(model, batch)


def assert_padding_free(model: nn.Module, steerer: Steerer, tokenizer: Any) -> None:
    """Each row of a left- and of a right-padded batch of PROMPTS + CONTS, steered, equals
    the same text steered alone: padding moves neither what is read nor what is edited."""
    pairs = zip(PROMPTS, CONTS)
    alone = [steered(model, steerer, encode(tokenizer, [p], [c]))[0] for p, c in pairs]
    for side in ("left", "right"):
        batch = encode(tokenizer, PROMPTS, CONTS, padding_side=side)
        out = steered(model, steerer, batch)
        starts = batch.layout.starts()
        for row, single in enumerate(alone):
            s = int(starts[row])
            got = out[row, s : s + single.shape[0]]
            torch.testing.assert_close(got, single, atol=1e-5, rtol=1e-5)


@contextmanager
def recording(model: nn.Module, component: str) -> Iterator[dict[int, Tensor]]:
    """`component` of every layer, as seen at the moment this hook runs (hooks registered
    before a steerer's see the unedited activation, hooks registered after it the edit)."""
    seen: dict[int, Tensor] = {}

    def grab(layer: int, act: Tensor) -> None:
        seen[layer] = act.detach().clone()

    n = model_shape(model).n_layers
    hooks = [LayerHook(i, grab) for i in range(n)]
    with hooked(model, site(architecture_of(model), component), hooks):
        yield seen


def count_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


class Force(LogitsProcessor):
    """Teacher forcing inside `generate`: step i can only pick `targets[:, i]`."""

    def __init__(self, targets: Tensor, start: int) -> None:
        self.targets, self.start = targets, start  # [batch, n], prompt length

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        step = input_ids.shape[1] - self.start
        forced = torch.full_like(scores, -torch.inf)
        rows = torch.arange(scores.shape[0])
        forced[rows, self.targets[:, step]] = 0.0
        return forced


def generated_logprob(
    model: nn.Module, steerer: Steerer | None, context: list[int], continuation: list[int]
) -> float:
    """log P(continuation | context) as `generate` sees it, with its KV cache, one new token
    per step (the raw logits of each step, before the forcing processor)."""
    ids = torch.tensor([context])
    targets = torch.tensor([continuation])
    n = len(continuation)
    kwargs = dict(
        attention_mask=torch.ones_like(ids),
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
        pad_token_id=0,
        use_cache=True,
        logits_processor=LogitsProcessorList([Force(targets, ids.shape[1])]),
        output_logits=True,
        return_dict_in_generate=True,
    )
    with torch.no_grad():
        if steerer is None:
            out = model.generate(ids, **kwargs)
        else:
            with steerer.apply(model):
                out = model.generate(ids, **kwargs)
    assert torch.equal(out.sequences[0, ids.shape[1] :], targets[0]), "forcing failed"
    logp = torch.stack(out.logits, dim=1).float().log_softmax(-1)[0]  # [n, vocab]
    return float(logp.gather(1, targets[0][:, None]).sum())


def steered_lm(
    model: nn.Module,
    steerer: Steerer | None,
    tokenizer: PreTrainedTokenizerBase,
    batch_size: int | str = 4,
) -> SteeredLM:
    """The lm-eval model `sadi` on `model` (on the CPU), steered by `steerer` (None: not)."""
    return SteeredLM(
        model, steerer=steerer, tokenizer=tokenizer, batch_size=batch_size, device="cpu"
    )


def loglikelihood_requests(pairs: Sequence[tuple[str, str]]) -> list[Instance]:
    """lm-eval log-likelihood requests for (context, continuation) pairs, in order."""
    return [
        Instance(request_type="loglikelihood", doc={}, arguments=a, idx=i)
        for i, a in enumerate(pairs)
    ]


def run_then_lm_eval(
    tmp_path: Path, overrides: Sequence[str], task: str = "copa", limit: int = 8
) -> tuple[Path, dict[str, Any]]:
    """`python -m sadi.run` on the embedded SmolLM2 with `overrides` (scoring `task`'s first
    `limit` select items), then `sadi-lm-eval` with the saved steerer; asserts the run
    succeeded, steering changed the log-likelihoods, and lm-eval reproduces the run's
    accuracy and log-likelihoods. Returns (run directory, results.json)."""
    from sadi.eval.export import export_tasks

    out = tmp_path / "run"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PATH": str(Path(sys.executable).parent),
    }
    common = [
        f"task={task}",
        f"task.limit={limit}",
        "task.splits=[select]",
        "logger=none",
        "progress=false",
        f"paths.cache_dir={tmp_path}/cache",
        f"hydra.run.dir={out}",
        f"paths.output_dir={out}",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "sadi.run", *overrides, *common],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())

    def rows(name: str) -> list[dict[str, Any]]:
        return [json.loads(s) for s in (out / name).read_text().splitlines()]

    samples = rows(f"samples_{task}_select.jsonl")
    base = rows(f"samples_{task}_select_baseline.jsonl")
    assert [s["loglikelihoods"] for s in samples] != [s["loglikelihoods"] for s in base]

    (exported,) = export_tasks(tmp_path / "tasks", [task], splits=["select"], limit=limit)
    lm_out = tmp_path / "lm_eval"
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "sadi-lm-eval"),
            "run",
            "--model",
            "sadi",
            "--include_path",
            str(exported.yaml.parent),
            "--tasks",
            exported.name,
            "--device",
            "cpu",
            "--batch_size",
            "8",
            "--model_args",
            f"pretrained=embedded:smollm2-135m-instruct,steerer={out / 'steerer'}",
            "--output_path",
            str(lm_out),
            "--log_samples",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result_file,) = lm_out.rglob("results_*.json")
    lm_acc = json.loads(result_file.read_text())["results"][exported.name]["acc,none"]
    assert lm_acc == results["metrics"]["select"]["acc"]
    (samples_file,) = lm_out.rglob(f"samples_{exported.name}_*.jsonl")
    cli = sorted(
        (json.loads(s) for s in samples_file.read_text().splitlines()), key=lambda s: s["doc_id"]
    )
    torch.testing.assert_close(
        torch.tensor([[float(r[0]) for r in s["filtered_resps"]] for s in cli]),
        torch.tensor([s["loglikelihoods"] for s in samples]),
        atol=1e-4,
        rtol=0,
    )
    return out, results


def http_json(url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of a GET (no body) or POST to `url`."""
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def greedy_text(model: nn.Module, tok: Any, steerer: Any, prompt: str, n: int) -> str:
    """`prompt`'s greedy continuation of `n` tokens in this process, under `steerer` (None:
    unsteered), cut at the end token and decoded: what `sadi serve` must answer."""
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    kwargs = dict(max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    generate: Any = model.generate
    with torch.no_grad():
        if steerer is None:
            out = generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
        else:
            with steerer.apply(model):
                out = generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    new = out[0, ids.shape[1] :].tolist()
    if tok.eos_token_id in new:
        new = new[: new.index(tok.eos_token_id)]
    return str(tok.decode(new, skip_special_tokens=True))
