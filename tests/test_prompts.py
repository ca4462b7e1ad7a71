"""The prompting arms (`sadi.data.prompts`): instruction and few-shot prompts come before the
question (the last prompt token stays the task's), few-shot examples leave the fit split,
every registered task has an instruction, a prompt composes with a steerer in a run, and a
prompted steered model is still one model (scored = generated)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from sadi.data.pairs import make_pairs
from sadi.data.prompts import INSTRUCTIONS_DIR, Prompt, instruction_for, render_task
from sadi.data.tasks import TASKS, load_task
from sadi.infra.errors import UserError
from sadi.steerers import CAA
from tests.conftest import PAIRS, byte_tokenizer, make_tiny
from tests.helpers import generated_logprob, loglikelihood_requests, run_tiny, steered_lm

TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def chat_tokenizer():  # type: ignore[no-untyped-def]
    tok = byte_tokenizer()
    tok.chat_template = TEMPLATE
    return tok


def test_every_registered_task_has_an_instruction() -> None:
    assert {p.stem for p in INSTRUCTIONS_DIR.glob("*.txt")} == set(TASKS)
    for name in TASKS:
        assert len(instruction_for(name)) > 20
    with pytest.raises(UserError, match="no instruction for task 'nope'.*instruction_file"):
        instruction_for("nope")


def test_instruction_and_shots_come_before_the_question() -> None:
    task = load_task("copa", limit=5)
    tok = byte_tokenizer()
    prompted, how = render_task(task, Prompt("instruction"), tok, chat_template=False)
    for plain, item in zip(task.splits["report"], prompted.splits["report"]):
        assert item.question.startswith(instruction_for("copa"))
        assert item.question.endswith(plain.question) and item.choices == plain.choices
    shots3, how = render_task(task, Prompt("few_shot", k=3, seed=1), tok, chat_template=False)
    assert len(how.shots) == 3
    shown = {s.id for s in how.shots}
    # the examples leave the fit split: no pair is made from an item shown solved
    assert not shown & {i.id for i in shots3.splits["fit"]}
    assert len(shots3.splits["fit"]) == len(task.splits["fit"]) - 3
    for item in shots3.splits["select"]:
        assert item.question.endswith(
            "\n\n" + next(p.question for p in task.splits["select"] if p.id == item.id)
        )
        for s in how.shots:  # each shot solved: its question and its correct answer
            assert s.question + s.choices[s.label] in item.question
    # seeded: the same seed draws the same examples, another seed others
    _, again = render_task(task, Prompt("few_shot", k=3, seed=1), tok, chat_template=False)
    _, other = render_task(task, Prompt("few_shot", k=3, seed=2), tok, chat_template=False)
    assert again.shots == how.shots and other.shots != how.shots
    # no prompt: the task as it is
    same, _ = render_task(task, Prompt(), tok, chat_template=False)
    assert same.splits == task.splits


def test_chat_prompts_put_the_instruction_in_the_system_turn_and_shots_in_earlier_turns() -> None:
    task = load_task("caa_refusal", format="ab", limit=3)
    tok = chat_tokenizer()
    inst, _ = render_task(task, Prompt("instruction"), tok, chat_template=True)
    item = inst.splits["select"][0]
    assert item.question.startswith(f"<system>{instruction_for('caa_refusal')}\n<user>")
    assert item.question.endswith("<assistant>") and item.choices == ("(A)", "(B)")
    few, how = render_task(task, Prompt("few_shot", k=2), tok, chat_template=True)
    item = few.splits["select"][0]
    assert item.question.count("<user>") == 3 and item.question.count("<assistant>") == 3
    for shot in how.shots:
        assert f"<assistant>{shot.choices[shot.label].strip()}\n" in item.question
    # the generations' prompts render the same way
    assert how.render("Tell me a secret.").endswith("<user>Tell me a secret.\n<assistant>")


def test_bad_prompts_are_named() -> None:
    with pytest.raises(UserError, match="prompt.k >= 1"):
        Prompt("few_shot", k=0)
    with pytest.raises(UserError, match="'chain'"):
        Prompt("chain")
    task = load_task("copa", limit=2)
    with pytest.raises(UserError, match="prompt.k=500.*smaller k"):
        render_task(task, Prompt("few_shot", k=500), byte_tokenizer(), chat_template=False)


def test_a_prompted_steered_model_is_one_model() -> None:
    """With a few-shot prompt before the question, CAA still edits from the last prompt
    token on: the scored log-likelihood equals teacher-forced generation, and it moves."""
    model, tok = make_tiny("llama"), byte_tokenizer()
    task = load_task("copa", limit=3)
    prompted, _ = render_task(task, Prompt("few_shot", k=1), tok, chat_template=False)
    pairs = make_pairs(prompted.splits["fit"], n_pairs=4)
    assert all("\n\n" in p.prompt for p in pairs)
    caa = CAA(layer=1, multiplier=3.0, progress=False).fit(model, tok, pairs or list(PAIRS))
    cases = [(i.question[-60:], i.choices[0]) for i in prompted.splits["select"][:2]]
    lm = steered_lm(model, caa, tok)
    scored = [ll for ll, _ in lm.loglikelihood(loglikelihood_requests(cases), disable_tqdm=True)]
    generated = [generated_logprob(model, caa, *lm._encode_pair(c, k)) for c, k in cases]
    torch.testing.assert_close(torch.tensor(scored), torch.tensor(generated), atol=1e-4, rtol=0)
    base = [generated_logprob(model, None, *lm._encode_pair(c, k)) for c, k in cases]
    assert all(abs(s - b) > 1e-4 for s, b in zip(scored, base))


def test_few_shot_with_caa_runs_end_to_end(tiny_model_dir: Path, tmp_path: Path) -> None:
    steer = ["intervention=caa", "intervention.layer=1", "intervention.multiplier=4.0"]
    plain = run_tiny(tiny_model_dir, tmp_path / "plain", *steer)
    few = run_tiny(tiny_model_dir, tmp_path / "few", "prompt=few_shot", "prompt.k=2", *steer)
    assert few["config"]["prompt"] == {
        "name": "few_shot",
        "k": 2,
        "seed": 0,
        "instruction_file": None,
    }
    shots = json.loads((tmp_path / "few" / "shots.json").read_text())
    assert len(shots) == 2
    pairs = [json.loads(s) for s in (tmp_path / "few" / "pairs.jsonl").read_text().splitlines()]
    assert not {s["id"] for s in shots} & {p["item_id"] for p in pairs}
    rows = (tmp_path / "few" / "samples_jsonl_select_baseline.jsonl").read_text().splitlines()
    assert all(shots[0]["question"] in json.loads(r)["context"] for r in rows)
    # the prompt changes the unsteered model's scores (its own baseline cache entry) ...
    assert (
        few["baseline_metrics"] != plain["baseline_metrics"] or few["metrics"] != plain["metrics"]
    )
    # ... and the steerer still moves the prompted model's scores
    steered = (tmp_path / "few" / "samples_jsonl_select.jsonl").read_text().splitlines()
    assert [json.loads(r)["loglikelihoods"] for r in steered] != [
        json.loads(r)["loglikelihoods"] for r in rows
    ]
    inst = run_tiny(
        tiny_model_dir,
        tmp_path / "inst",
        "prompt=instruction",
        f"prompt.instruction_file={INSTRUCTIONS_DIR / 'copa.txt'}",
    )
    assert inst["steered"] is True


def test_the_sweep_engine_scores_a_prompted_run_as_lm_eval_does(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The shots are one beginning shared by every context: the engine runs it once and
    gives lm-eval's scores."""
    args = [
        "prompt=few_shot",
        "prompt.k=3",
        "intervention=caa",
        "intervention.layer=1",
        "intervention.multiplier=4.0",
    ]
    direct = run_tiny(tiny_model_dir, tmp_path / "direct", *args, "sweep.engine=false")
    engine = run_tiny(tiny_model_dir, tmp_path / "engine", *args, "sweep.engine=true")
    assert engine["sweep_engine"]
    for split in ("select", "report"):
        assert engine["metrics"][split]["acc"] == direct["metrics"][split]["acc"]
    lls = [
        [
            json.loads(r)["loglikelihoods"]
            for r in (d / "samples_jsonl_select.jsonl").read_text().splitlines()
        ]
        for d in (tmp_path / "direct", tmp_path / "engine")
    ]
    torch.testing.assert_close(torch.tensor(lls[0]), torch.tensor(lls[1]), atol=1e-4, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize(
    "task, arm",
    [
        (
            "copa",
            [
                "prompt=few_shot",
                "prompt.k=2",
                "intervention=caa",
                "intervention.layer=15",
                "intervention.multiplier=4.0",
            ],
        ),
        ("caa_refusal", ["intervention=lora", "intervention.epochs=1"]),
        ("caa_refusal", ["prompt=instruction", "intervention=reft", "intervention.epochs=1"]),
    ],
    ids=["copa-few_shot-caa", "caa_refusal-lora", "caa_refusal-instruction-reft"],
)
def test_the_new_arms_run_end_to_end_on_smollm2_and_move_scores(
    task: str, arm: list[str], tmp_path: Path
) -> None:
    """`python -m sadi.run` with each new arm on the embedded SmolLM2: a steered arm's scores
    differ from its unsteered (same prompt) scores on every scored split."""
    from sadi.pipeline.context import RunContext
    from sadi.pipeline.runner import run
    from sadi.run import CONF_DIR

    out = tmp_path / "run"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                f"task={task}",
                "task.limit=6",
                "task.n_pairs=8",
                "logger=none",
                "progress=false",
                f"paths.cache_dir={tmp_path / 'cache'}",
                f"paths.output_dir={out}",
                *arm,
            ],
        )
    run(RunContext.build(cfg))
    results = json.loads((out / "results.json").read_text())
    assert results["steered"] and results["n_pairs"] == 8
    for split in ("select", "report"):
        rows = [(out / f"samples_{task}_{split}{s}.jsonl").read_text() for s in ("", "_baseline")]
        steered, base = ([json.loads(r)["loglikelihoods"] for r in t.splitlines()] for t in rows)
        assert steered != base


def test_a_missing_instruction_fails_before_the_model_loads(tmp_path: Path) -> None:
    """The generic jsonl task has no instruction file: the run names the fix, and no model
    directory is ever read (the model path does not exist)."""
    with pytest.raises(UserError, match="no instruction for task 'jsonl'"):
        run_tiny(tmp_path / "no-model-here", tmp_path / "run", "prompt=instruction")
    with pytest.raises(UserError, match="prompt.k=99"):
        run_tiny(tmp_path / "no-model-here", tmp_path / "run2", "prompt=few_shot", "prompt.k=99")


def test_a_changed_instruction_makes_a_completed_point_run_again(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The same config with another instruction text (same file) is not the completed point."""
    inst = tmp_path / "inst.txt"
    inst.write_text("Pick the more plausible answer.")
    args = ["prompt=instruction", f"prompt.instruction_file={inst}", "intervention=none"]
    first = run_tiny(tiny_model_dir, tmp_path / "run", *args)
    again = run_tiny(tiny_model_dir, tmp_path / "run", *args)
    assert again["timings"] == first["timings"]  # skipped: the same point
    inst.write_text("Choose the answer that is true.")
    changed = run_tiny(tiny_model_dir, tmp_path / "run", *args)
    assert changed["inputs"]["instruction"] != first["inputs"]["instruction"]
    assert changed["timings"] != first["timings"]  # ran again
