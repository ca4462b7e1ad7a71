"""sadi-lm-eval: task export, lm-eval's own CLI on exported tasks, --help, allow_other_weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch
from lm_eval.tasks import TaskManager
from lm_eval.tasks._yaml_loader import load_yaml
from torch import nn

from sadi.core.architectures import weights_fingerprint
from sadi.data.tasks import EXAMPLE_DATA, Item, default_data_dir, load_task, read_jsonl
from sadi.eval.cli import SADI_HELP, cli
from sadi.eval.export import export_tasks, lm_eval_name
from sadi.eval.harness import evaluate_split, task_config
from sadi.eval.lm import SteeredLM
from sadi.eval.metrics import process_mc2
from sadi.steerers import SADI
from sadi.steerers.identity import FingerprintMismatch, WeightsMismatch
from tests.conftest import PAIRS, byte_tokenizer, make_tiny

_SCRIPT = Path(sys.executable).parent / "sadi-lm-eval"  # the console script users type
SADI_LM_EVAL = (
    [str(_SCRIPT)]
    if _SCRIPT.exists()
    else [sys.executable, "-c", "from sadi.eval.cli import cli; cli()"]
)
OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def rows(items: list[Item]) -> list[dict]:
    return [{**asdict(i), "choices": list(i.choices), "correct": list(i.correct)} for i in items]


# ----- export ------------------------------------------------------------------------------
def test_export_writes_sadi_task_config_and_split_items(tmp_path: Path) -> None:
    written = export_tasks(tmp_path, ["copa", "truthfulqa_mc2"], limit=20)
    assert [t.name for t in written] == [
        "sadi_copa_select",
        "sadi_copa_report",
        "sadi_truthfulqa_mc2_select",
        "sadi_truthfulqa_mc2_report",
    ]
    for exported, (task, split, metric) in zip(
        written,
        [
            (t, s, m)
            for t, m in (("copa", "acc"), ("truthfulqa_mc2", "mc2"))
            for s in ("select", "report")
        ],
    ):
        assert exported.yaml == tmp_path / f"{exported.name}.yaml"
        assert exported.data == tmp_path / f"{exported.name}.jsonl"
        # lm-eval's own loader reads back exactly sadi.eval.harness's config, plus the tag
        assert load_yaml(exported.yaml) == {
            **task_config(exported.name, exported.data, metric),  # type: ignore[arg-type]
            "tag": [f"sadi_{split}"],
        }
        items = load_task(task, limit=20).splits[split]  # type: ignore[index]
        assert read_jsonl(exported.data) == rows(items)
        assert exported.n_items == len(items) == 20
    # the MC2 scorer is imported by its dotted path, not copied
    assert load_yaml(written[-1].yaml)["process_results"] is process_mc2
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    assert {t.name for t in written} | {"sadi_select", "sadi_report"} <= set(manager.all_tasks)


def test_export_jsonl_example_in_ab_format(tmp_path: Path) -> None:
    path = EXAMPLE_DATA / "tiny_mc.jsonl"
    (exported,) = export_tasks(tmp_path, ["jsonl"], format="ab", splits=["report"], path=path)
    assert exported.name == lm_eval_name("jsonl", "report", "ab") == "sadi_jsonl_ab_report"
    items = load_task("jsonl", path=path, format="ab").splits["report"]
    assert read_jsonl(exported.data) == rows(items) and len(items) == 10
    assert all(r["question"].endswith("\nAnswer:") for r in read_jsonl(exported.data))
    assert load_yaml(exported.yaml)["tag"] == ["sadi_ab_report"]


def test_export_names_the_users_data_as_a_run_does(tmp_path: Path) -> None:
    """With path=, any unregistered name names the data (as task.name does for sadi.run); a
    registered name with other data is refused."""
    path = EXAMPLE_DATA / "tiny_mc.jsonl"
    (exported,) = export_tasks(tmp_path, ["xcopa_it"], splits=["report"], path=path)
    assert exported.name == "sadi_xcopa_it_report"
    with pytest.raises(ValueError, match=r"'copa' is a registered task"):
        export_tasks(tmp_path, ["copa"], path=path)
    with pytest.raises(ValueError, match=r"gives one dataset"):
        export_tasks(tmp_path, ["jsonl", "mine"], path=path)


def test_export_refuses_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown task 'copaa'.*Did you mean \['copa'\]"):
        export_tasks(tmp_path, ["copaa"])
    with pytest.raises(ValueError, match=r"--path FILE"):
        export_tasks(tmp_path, ["jsonl"])
    with pytest.raises(ValueError, match=r"glob"):
        export_tasks(tmp_path / "run[select]", ["copa"])
    with pytest.raises(ValueError, match=r"'test'"):
        export_tasks(tmp_path, ["copa"], splits=["test"])
    # every task loads before anything is written: copa's data is there, sst2's is not
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    (data / "copa").symlink_to(default_data_dir() / "copa")
    with pytest.raises(FileNotFoundError, match="sst2"):
        export_tasks(out, ["copa", "sst2"], data_dir=data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing written


def test_cli_tasks_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli(
        [
            "tasks",
            "export",
            str(tmp_path),
            "--tasks",
            "sst2,copa",
            "--limit",
            "5",
            "--splits",
            "select",
        ]
    )
    out = capsys.readouterr().out
    assert "sadi_sst2_select: 5 items" in out and "sadi_copa_select: 5 items" in out
    assert f"--include_path {tmp_path}" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "sadi_copa_select.jsonl",
        "sadi_copa_select.yaml",
        "sadi_sst2_select.jsonl",
        "sadi_sst2_select.yaml",
    ]
    with pytest.raises(SystemExit) as exit_:
        cli(["tasks", "export", str(tmp_path), "--tasks", "sts2"])
    assert exit_.value.code == 2
    assert "unknown task 'sts2'" in capsys.readouterr().err


# ----- --help ------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"]])
def test_help_shows_the_sadi_section(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("lm_eval.utils.setup_logging", lambda: None)  # keep pytest's logging
    monkeypatch.setattr(sys, "argv", ["sadi-lm-eval"])
    with pytest.raises(SystemExit) as exit_:
        cli(argv)
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert SADI_HELP in out
    for text in ("steerer=DIR", "allow_other_weights=true", "tasks export DIR", "--include_path"):
        assert text in out
    # still lm-eval's own help after it
    assert ("--model_args" if argv[0] == "run" else "validate") in out


# ----- the model arg allow_other_weights, and lm-eval's CLI on an exported task ------------
@pytest.fixture(scope="module")
def other_weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path, SADI, Path]:
    """(model seed 1, its saved dir, a SADI steerer fitted on seed 0, its saved dir)."""
    root = tmp_path_factory.mktemp("other-weights")
    steerer = SADI("head", k=3, strength=4.0, progress=False)
    steerer.fit(make_tiny("llama", seed=0), byte_tokenizer(), PAIRS)
    steerer.save(root / "steerer")
    model = make_tiny("llama", seed=1)
    model.save_pretrained(root / "model")
    byte_tokenizer().save_pretrained(root / "model")
    return model, root / "model", steerer, root / "steerer"


def test_allow_other_weights_model_arg(other_weights: tuple) -> None:
    model, model_dir, steerer, steerer_dir = other_weights
    extra = {"device": "cpu", "batch_size": 2}
    args = f"pretrained={model_dir},steerer={steerer_dir}"
    with pytest.raises(WeightsMismatch, match="allow_other_weights=True"):
        SteeredLM.create_from_arg_string(args, extra)
    lm = SteeredLM.create_from_arg_string(args + ",allow_other_weights=true", extra)
    assert lm.steerer is not None
    assert weights_fingerprint(model) in lm.steerer.accepted_weights
    with pytest.raises(ValueError, match=r"allow_other_weights must be true or false, got 'yes'"):
        SteeredLM(model, steerer=steerer_dir, allow_other_weights="yes", tokenizer=byte_tokenizer())
    # a fitted Steerer object: refused, accepted as a copy, the caller's object untouched
    with pytest.raises(WeightsMismatch):
        SteeredLM(model, steerer=steerer, tokenizer=byte_tokenizer())
    lm = SteeredLM(model, steerer=steerer, allow_other_weights=True, tokenizer=byte_tokenizer())
    assert lm.steerer is not steerer and not steerer.accepted_weights
    # other weights, never another shape
    with pytest.raises(FingerprintMismatch, match="refit"):
        SteeredLM(
            make_tiny("gpt2"),
            steerer=steerer_dir,
            allow_other_weights=True,
            tokenizer=byte_tokenizer(),
        )


class _TaskManagerWithoutBuiltins(TaskManager):
    """lm-eval's TaskManager without its built-in index (building that takes ~15 s here)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "include_defaults": False})


@pytest.mark.parametrize(
    "how", ["in_process", pytest.param("console_script", marks=pytest.mark.slow)]
)
def test_lm_eval_cli_scores_an_exported_task_as_sadi_does(
    how: str, other_weights: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sadi-lm-eval run` on an exported COPA split with a steerer fitted on other weights
    gives the log-likelihoods and acc of `evaluate_split` (what `python -m sadi.run` scores).

    in_process: `cli()` in this process, lm-eval's built-in task index skipped; console_script:
    the installed `sadi-lm-eval` as a user runs it, offline, built-in index and all.
    """
    model, model_dir, steerer, steerer_dir = other_weights
    (exported,) = export_tasks(tmp_path / "tasks", ["copa"], splits=["select"], limit=12)
    limit, out = 8, tmp_path / "out"
    argv = [
        "run",
        "--model",
        "sadi",
        "--include_path",
        str(exported.yaml.parent),
        "--tasks",
        exported.name,
        "--limit",
        str(limit),
        "--device",
        "cpu",
        "--batch_size",
        "4",
        "--model_args",
        f"pretrained={model_dir},steerer={steerer_dir},allow_other_weights=true",
        "--output_path",
        str(out),
        "--log_samples",
    ]
    if how == "in_process":
        monkeypatch.setattr("lm_eval.utils.setup_logging", lambda: None)
        monkeypatch.setattr("lm_eval.tasks.TaskManager", _TaskManagerWithoutBuiltins)
        monkeypatch.setattr(sys, "argv", ["sadi-lm-eval"])
        cli(argv)
    else:
        proc = subprocess.run(
            [*SADI_LM_EVAL, *argv], capture_output=True, text=True, timeout=600, env=OFFLINE
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    (result_file,) = out.rglob("results_*.json")
    results = json.loads(result_file.read_text())["results"][exported.name]
    (samples_file,) = out.rglob(f"samples_{exported.name}_*.jsonl")
    cli_lls = torch.tensor(
        [
            [float(r[0]) for r in s["filtered_resps"]]
            for s in sorted(read_jsonl(samples_file), key=lambda s: s["doc_id"])
        ]
    )

    items = load_task("copa", limit=12).splits["select"][:limit]
    lm = SteeredLM(
        model, steerer=steerer, allow_other_weights=True, tokenizer=byte_tokenizer(), batch_size=4
    )
    metrics, samples = evaluate_split(lm, items, task_name="sadi_copa_select_py", metric="acc")
    assert cli_lls.shape == (limit, 2)
    want = torch.tensor([s["loglikelihoods"] for s in samples])
    torch.testing.assert_close(cli_lls, want, atol=1e-5, rtol=0)
    assert (results["acc,none"], results["acc_norm,none"]) == (metrics["acc"], metrics["acc_norm"])
    # and the steerer was applied: unsteered scores differ
    _, base = evaluate_split(
        SteeredLM(model, tokenizer=byte_tokenizer(), batch_size=4),
        items,
        task_name="sadi_copa_select_base",
        metric="acc",
    )
    assert not torch.allclose(torch.tensor([s["loglikelihoods"] for s in base]), cli_lls)


# ----- nothing sadi-lm-eval reads runs pickled code ----------------------------------------
class _Payload:
    """Unpickling this runs os.mkdir(marker): a stand-in for any code in a pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def _steered_argv(tmp_path: Path, model_dir: Path, steer_path: Path) -> list[str]:
    (exported,) = export_tasks(tmp_path / "tasks", ["copa"], splits=["select"], limit=4)
    return [
        "run",
        "--model",
        "steered",
        "--include_path",
        str(exported.yaml.parent),
        "--tasks",
        exported.name,
        "--device",
        "cpu",
        "--model_args",
        f"pretrained={model_dir},steer_path={steer_path}",
        "--output_path",
        str(tmp_path / "out"),
    ]


@pytest.fixture
def in_process_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("lm_eval.utils.setup_logging", lambda: None)
    monkeypatch.setattr("lm_eval.tasks.TaskManager", _TaskManagerWithoutBuiltins)
    monkeypatch.setattr(sys, "argv", ["sadi-lm-eval"])
    monkeypatch.setenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "0")  # restored after the test


def test_steered_model_never_runs_a_pickled_payload(
    tmp_path: Path, tiny_model_dir: Path, in_process_cli: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """lm-eval 0.4.13's `steered` model reads steer_path with torch.load(weights_only=False);
    through sadi-lm-eval the payload is refused, never run, with one line naming the file."""
    marker, evil = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"layers.1": {"action": "add", "steering_vector": _Payload(marker)}}, evil)
    with pytest.raises(SystemExit) as exit_:
        cli(_steered_argv(tmp_path, tiny_model_dir, evil))
    assert exit_.value.code == 2
    assert not marker.exists()
    err = capsys.readouterr().err
    assert f"refused to load steer_path={evil}" in err and "Traceback" not in err


def test_steered_model_still_reads_plain_vectors(
    tmp_path: Path, tiny_model_dir: Path, in_process_cli: None
) -> None:
    """A vector file of tensors and plain data (what sadi.eval.interop writes) still loads."""
    from sadi.core.models import load_model
    from sadi.eval.interop import export_lm_eval_steer
    from sadi.steerers import CAA

    model, tok = load_model(str(tiny_model_dir), device="cpu")
    caa = CAA(layer=1, multiplier=2.0, positions="all", progress=False).fit(model, tok, PAIRS)
    good = export_lm_eval_steer(caa, model, tmp_path / "caa.pt")
    cli(_steered_argv(tmp_path, tiny_model_dir, good))
    assert list((tmp_path / "out").rglob("results_*.json"))


@pytest.mark.parametrize("option", ["--use_cache", "--cache_requests"])
def test_pickle_cache_options_are_refused(
    option: str, in_process_cli: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli(["run", "--model", "sadi", "--tasks", "x", option, "/tmp/db"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert option in err and "unpickling runs whatever code" in err


def test_run_without_batch_size_takes_sadis(capsys: pytest.CaptureFixture[str]) -> None:
    from sadi.eval.cli import _with_batch_size

    assert _with_batch_size(["run", "--model", "sadi"])[-2:] == ["--batch_size", "16"]
    assert "no --batch_size given: using 16" in capsys.readouterr().err
    given = ["run", "--batch_size", "4"]
    assert _with_batch_size(given) == given
    assert _with_batch_size(["tasks", "export"]) == ["tasks", "export"]
