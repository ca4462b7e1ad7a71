"""Score a sadi task split through lm-evaluation-harness, with or without a steerer.

Each split is written as a JSONL file (id, question, choices, label, correct) into a private
temporary directory (the `datasets` json loader treats paths as glob patterns, so run
directories named after overrides such as `task.splits=[select]` cannot hold it) and handed
to lm-eval as a `multiple_choice` task built from a config dict (`dataset_path: json`), so
lm-eval does the request building, batching and metrics offline. The run directory keeps the
per-sample records instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lm_eval import simple_evaluate
from lm_eval.api.model import LM
from lm_eval.tasks import TaskManager

from sadi.data.tasks import Item, Metric
from sadi.eval.metrics import (
    METRICS,
    SCORINGS,
    NonFiniteScores,
    label_probability,
    lm_eval_metric_list,
    overflowed,
)

log = logging.getLogger(__name__)
# lm-eval only ever reads local JSONL files here: never ask the hub about them
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
_TASK_MANAGER: TaskManager | None = None


def task_manager() -> TaskManager:
    """One TaskManager without lm-eval's built-in index (building that takes ~5 s)."""
    global _TASK_MANAGER
    if _TASK_MANAGER is None:
        _TASK_MANAGER = TaskManager(include_defaults=False)
    return _TASK_MANAGER


def task_config(name: str, data_file: Path, metric: Metric) -> dict[str, Any]:
    """An lm-eval task config (as a dict) scoring a canonical JSONL file."""
    config: dict[str, Any] = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "question",
        "doc_to_choice": "choices",
        "doc_to_target": "label",
        # sadi's continuations carry their own leading space
        "target_delimiter": "",
        "metadata": {"version": 1.0},
    }
    scoring = SCORINGS[metric]
    if scoring.process_results is not None:
        config["process_results"] = scoring.process_results
    config["metric_list"] = lm_eval_metric_list(metric)
    return config


_ENV_INFO: list[str] = []


@contextmanager
def _env_info_once() -> Iterator[None]:
    """lm-eval's `simple_evaluate` records torch's environment report, which runs ~11
    subprocesses (~1 s, 17 times in a 16-point sweep) for results this module discards:
    compute it once per process. If torch moves the function, it is simply computed anew."""
    from torch.utils import collect_env

    original = getattr(collect_env, "get_pretty_env_info", None)
    if original is None:
        yield
        return

    def once() -> str:
        if not _ENV_INFO:
            _ENV_INFO.append(original())
        return _ENV_INFO[0]

    collect_env.get_pretty_env_info = once
    try:
        yield
    finally:
        collect_env.get_pretty_env_info = original


_GIT_HASH: list[str | None] = []


def _quiet_git_hash() -> str | None:
    """The commit `git describe --always` names here, None outside a repository or without
    git, with git's own complaint kept off the user's terminal; asked once per process."""
    import subprocess

    if not _GIT_HASH:
        try:
            out = subprocess.run(
                ["git", "describe", "--always"], capture_output=True, text=True, check=True
            )
            _GIT_HASH.append(out.stdout.strip() or None)
        except (OSError, subprocess.CalledProcessError):
            _GIT_HASH.append(None)
    return _GIT_HASH[0]


@contextmanager
def _quiet_git() -> Iterator[None]:
    """lm-eval's `simple_evaluate` records the git commit of the working directory by running
    git with its stderr on the terminal, so every evaluation outside a checkout prints "fatal:
    not a git repository": ask once, quietly. If lm-eval moves the function, nothing is
    changed."""
    import lm_eval.evaluator as evaluator

    original = getattr(evaluator, "get_git_commit_hash", None)
    if original is None:
        yield
        return
    evaluator.get_git_commit_hash = _quiet_git_hash
    try:
        yield
    finally:
        evaluator.get_git_commit_hash = original


@contextmanager
def _no_request_bar() -> Iterator[None]:
    """lm-eval builds a task's requests under a progress bar with no label (one per split
    scored, in 0.4.13 `lm_eval.api.task.tqdm`): silence it; sadi's and lm-eval's labelled
    bars stay. Where lm-eval builds them otherwise, nothing is changed."""
    import functools

    from lm_eval.api import task as task_module

    original = getattr(task_module, "tqdm", None)
    if original is None:
        yield
        return
    task_module.tqdm = functools.partial(original, disable=True)  # type: ignore[attr-defined]
    try:
        yield
    finally:
        task_module.tqdm = original  # type: ignore[attr-defined]


def _simple_evaluate(lm: LM, config: dict[str, Any], seed: int) -> dict[str, Any]:
    with _env_info_once(), _quiet_git(), _no_request_bar():
        out = simple_evaluate(
            model=lm,
            tasks=[config],
            num_fewshot=0,
            task_manager=task_manager(),
            log_samples=True,
            bootstrap_iters=0,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    assert out is not None
    return out


def write_split(items: Sequence[Item], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for item in items:
            row = asdict(item)
            row["choices"], row["correct"] = list(item.choices), list(item.correct)
            f.write(json.dumps(row) + "\n")
    return path


def check_finite(task_name: str, lm: LM, samples: Sequence[dict[str, Any]]) -> None:
    """Raise `NonFiniteScores` naming the items whose log-likelihoods are not finite: their
    argmax, accuracy and p_label would be silently wrong."""
    bad = [s["id"] for s in samples if not all(math.isfinite(x) for x in s["loglikelihoods"])]
    if not bad:
        return
    # the HF backend's torch model, or the vLLM backend's engine
    dtype = getattr(getattr(lm, "model", None), "dtype", None)
    dtype = dtype or getattr(getattr(lm, "engine", None), "dtype", None) or "its dtype"
    raise NonFiniteScores(
        f"{task_name}: {len(bad)} of {len(samples)} items scored NaN or infinite "
        f"log-likelihoods (first: {bad[:3]}): {overflowed(dtype)}"
    )


def evaluate_split(
    lm: LM,
    items: Sequence[Item],
    *,
    task_name: str,
    metric: Metric,
    seed: int = 0,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Score `items` with `lm` through lm-eval.

    Raises:
        NonFiniteScores: a log-likelihood is NaN or infinite (an overflowed dtype).

    Returns:
        (metrics, samples): metrics as {metric: value, metric_stderr: value}; samples, one per
        item, with its context, continuations, log-likelihoods, prediction and scores.
    """
    with tempfile.TemporaryDirectory(prefix="sadi-lm-eval-") as tmp:
        data_file = write_split(items, Path(tmp) / f"{task_name}.jsonl")
        out = _simple_evaluate(lm, task_config(task_name, data_file, metric), seed)
    raw = out["results"][task_name]

    metrics: dict[str, float] = {}
    for key, value in raw.items():
        if "," not in key or not isinstance(value, int | float):
            continue
        name = key.split(",")[0]
        metrics[name] = float(value)
    reported = SCORINGS[metric].metrics
    for name in (m for m in reported if METRICS[m].lm_eval and METRICS[m].binary):
        # mean of 0/1: the binomial standard error, as lm-eval reports
        n, p = len(items), metrics[name]
        metrics[f"{name}_stderr"] = math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else 0.0
    samples = []
    for s in sorted(out["samples"][task_name], key=lambda s: s["doc_id"]):
        doc = s["doc"]
        lls = [float(r[0]) for r in s["filtered_resps"]]
        samples.append(
            {
                "id": doc["id"],
                "context": doc["question"],
                "continuations": doc["choices"],
                "loglikelihoods": lls,
                "label": doc["label"],
                "prediction": max(range(len(lls)), key=lambda i: lls[i]),
                **{k: s[k] for k in reported if k in s},
            }
        )
        if "p_label" in reported:
            samples[-1]["p_label"] = label_probability(lls, doc["label"])
        if SCORINGS[metric].records_correct:
            samples[-1]["correct"] = list(doc["correct"])
    check_finite(task_name, lm, samples)
    if samples and "p_label" in reported:
        values = [s["p_label"] for s in samples]
        metrics["p_label"] = sum(values) / len(values)
        metrics["p_label_stderr"] = _stderr(values)
    return metrics, samples


def _stderr(values: Sequence[float]) -> float:
    """Standard error of the mean (sample standard deviation / sqrt(n)), as lm-eval's."""
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def open_ended_prompts(task_name: str, data_dir: str | Path | None) -> list[tuple[str, str]]:
    """(id, question) of a CAA behaviour's open-ended test set, `test_open_ended.jsonl`."""
    from sadi.data.tasks import TASKS, default_data_dir, read_jsonl

    if task_name not in TASKS or not TASKS[task_name].folder.startswith("caa/"):
        raise ValueError(
            f"open-ended generation is defined for the CAA behaviour tasks (caa_*), "
            f"not {task_name!r}; set task.open_ended=false"
        )
    root = Path(data_dir) if data_dir else default_data_dir()
    rows = read_jsonl(root / TASKS[task_name].folder / "test_open_ended.jsonl")
    return [(str(r["id"]), str(r["question"])) for r in rows]


def open_ended_split(item_id: str) -> str:
    """The split of an open-ended prompt: "select" or "report", half each, by a hash of its
    id (stable across runs and `task.limit`). A judged score is selected on the select half
    and reported on the report half, as every other metric; nothing is fit on them."""
    return "select" if hashlib.sha256(item_id.encode()).digest()[0] % 2 == 0 else "report"


def _generation_length(doc: dict[str, Any], results: Sequence[str]) -> dict[str, float]:
    return {"gen_chars": float(len(results[0]))}


def generate_split(
    lm: LM,
    prompts: Sequence[tuple[str, str]],
    *,
    task_name: str,
    max_gen_toks: int = 64,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Greedy generations for (id, prompt) pairs through lm-eval's generate_until.

    Open-ended answers need a judge (CAA used GPT-4) that is not available offline; the
    generations are returned for rating, with their length as the only automatic metric.
    """
    tmp = tempfile.TemporaryDirectory(prefix="sadi-lm-eval-")
    data_file = Path(tmp.name) / f"{task_name}.jsonl"
    with data_file.open("w") as f:
        for item_id, text in prompts:
            f.write(json.dumps({"id": item_id, "question": text}) + "\n")
    config = {
        "task": task_name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "question",
        "doc_to_target": "",
        "generation_kwargs": {"until": [], "max_gen_toks": max_gen_toks, "do_sample": False},
        "process_results": _generation_length,
        "metric_list": [{"metric": "gen_chars", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }
    with tmp:
        out = _simple_evaluate(lm, config, seed)
    return [
        {"id": s["doc"]["id"], "prompt": s["doc"]["question"], "generation": s["resps"][0][0]}
        for s in sorted(out["samples"][task_name], key=lambda s: s["doc_id"])
    ]
