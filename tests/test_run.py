"""The Hydra entry point: composition, an end-to-end run on a tiny model, results schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ValidationError

from sadi.pipeline.validate import ConfigError
from sadi.run import CONF_DIR, check_overrides, run
from tests.conftest import byte_tokenizer, make_tiny
from tests.helpers import tiny_run


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def compose_run(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


# ITI steers attention heads and CAA the residual stream; other methods take any component
FIXED_COMPONENT = {
    **{m: "head" for m in ("iti", "iti_random")},
    **{m: "residual" for m in ("caa", "caa_pca", "caa_random", "reft", "sas", "sas_random")},
}


@pytest.mark.slow  # ~200 compositions
def test_every_option_composes_with_every_option_it_meets() -> None:
    """Every model with every task, and every valid component with every intervention (the
    pairs whose validity depends on each other); the other groups at their defaults."""
    pairs = [
        *(("model", m, "task", t) for m in options("model") for t in options("task")),
        *(
            ("component", c, "intervention", i)
            for c in options("component")
            for i in options("intervention")
            if FIXED_COMPONENT.get(i, c) == c
        ),
    ]
    assert len(pairs) >= 8 * 14 + 5 * 8 + 2
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for g1, o1, g2, o2 in pairs:
            extra = ["task.path=/some/file.jsonl"] if "jsonl" in (o1, o2) else []
            cfg = compose(
                "config", overrides=[f"{g1}={o1}", f"{g2}={o2}", "paths.output_dir=/tmp/x", *extra]
            )
            assert cfg[g1].name == o1 and cfg[g2].name == o2
            assert cfg.optimized_metric.startswith("select/")


@pytest.mark.parametrize(
    "override, cause, names",
    [
        ("intervention.kk=3", ConfigAttributeError, "kk"),
        ("intervention.k=four", ValidationError, "four"),
        ("task.n_pairs=many", ValidationError, "many"),
        ("model.batchsize=4", ConfigAttributeError, "batchsize"),
    ],
)
def test_typos_and_wrong_types_fail_at_composition(override: str, cause: type, names: str) -> None:
    with pytest.raises(ConfigCompositionException) as info:
        compose_run([override, "paths.output_dir=/tmp/x"])
    assert isinstance(info.value.__cause__, cause)
    assert names in str(info.value.__cause__)


def test_unknown_group_option_suggests_nearest() -> None:
    with pytest.raises(ConfigError, match=r"unknown task 'cpoa'.*Did you mean \['copa'\]"):
        check_overrides(["task=cpoa"])
    with pytest.raises(ConfigError, match=r"unknown model 'smollm2'.*smollm2_135m"):
        check_overrides(["model=smollm2"])
    check_overrides(["task=copa,sst2", "intervention.k=3"])  # valid: no error


def tiny_overrides(model_dir: Path, out: Path, *extra: str) -> list[str]:
    """A run of SADI on a tiny random model and the project's own tiny JSONL task."""
    return [
        f"paths.cache_dir={out.parent / 'cache'}",
        *tiny_run(model_dir),
        "intervention.k=3",
        "intervention.strength=4.0",
        f"paths.output_dir='{out}'",
        *extra,
    ]


def test_end_to_end_on_a_tiny_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    value = run(compose_run(tiny_overrides(tiny_model_dir, out)))
    results = json.loads((out / "results.json").read_text())
    assert set(results) >= {
        "config",
        "metrics",
        "baseline_metrics",
        "n_pairs",
        "timings",
        "steerer",
    }
    for key in ("metrics", "baseline_metrics"):
        assert set(results[key]) == {"select", "report"}
        for split_metrics in results[key].values():
            assert {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"} <= set(split_metrics)
            assert 0.0 <= split_metrics["acc"] <= 1.0
    assert value == results["metrics"]["select"]["acc"]
    assert results["n_pairs"] == 8 and results["config"]["intervention"]["k"] == 3
    assert (out / "steerer" / "steerer.safetensors").exists()
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 8 and set(pairs[0]) == {"prompt", "positive", "negative", "item_id"}
    splits = json.loads((out / "splits.json").read_text())
    fit_ids = {p["item_id"] for p in pairs}
    assert fit_ids <= set(splits["ids"]["fit"])
    assert not set(splits["ids"]["fit"]) & set(splits["ids"]["report"])
    samples = (out / "samples_jsonl_select.jsonl").read_text().splitlines()
    first = json.loads(samples[0])
    assert {"id", "context", "continuations", "loglikelihoods", "acc"} <= set(first)
    assert len(samples) == len(splits["ids"]["select"])
    assert (out / "samples_jsonl_report_baseline.jsonl").exists()
    # the steered metrics are computed from the steered samples, which differ from baseline
    base = [
        json.loads(s)["loglikelihoods"]
        for s in (out / "samples_jsonl_select_baseline.jsonl").read_text().splitlines()
    ]
    steer = [json.loads(s)["loglikelihoods"] for s in samples]
    assert base != steer


def test_same_command_twice_and_any_batch_size_give_identical_metrics(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    metrics = []
    for i, bs in enumerate([4, 4, 1, "auto"]):
        out = tmp_path / f"run{i}"
        # a cache of its own per run: every run fits and scores from scratch
        overrides = tiny_overrides(
            tiny_model_dir, out, f"model.batch_size={bs}", f"paths.cache_dir={tmp_path}/c{i}"
        )
        run(compose_run(overrides))
        r = json.loads((out / "results.json").read_text())
        assert r["timings"]["fit_cache_hit"] == 0.0
        metrics.append((r["metrics"], r["baseline_metrics"]))
    assert metrics[1] == metrics[0]  # the same command: bit for bit
    for steered, base in metrics[2:]:  # other batch sizes: the same predictions
        for got, want in ((steered, metrics[0][0]), (base, metrics[0][1])):
            for split, values in want.items():
                assert got[split].keys() == values.keys()
                for name, value in values.items():
                    # p_label sums probabilities: float rounding of other batch shapes shows
                    tol = 1e-6 if name.startswith("p_label") else 0.0
                    assert abs(got[split][name] - value) <= tol, (split, name)


def test_intervention_none_scores_the_baseline_only(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "none"
    overrides = [
        o for o in tiny_overrides(tiny_model_dir, out) if not o.startswith("intervention.")
    ]
    run(compose_run([*overrides, "intervention=none"]))
    results = json.loads((out / "results.json").read_text())
    assert results["steerer"] is None and results["metrics"] == results["baseline_metrics"]


def test_missing_data_dir_says_where_it_looked(tiny_model_dir: Path, tmp_path: Path) -> None:
    overrides = [o for o in tiny_overrides(tiny_model_dir, tmp_path) if not o.startswith("task")]
    cfg = compose_run([*overrides, "task=copa", f"paths.data_dir={tmp_path}/nope"])
    with pytest.raises(FileNotFoundError, match="nope"):
        run(cfg)


@pytest.mark.slow
def test_end_to_end_on_smollm2_copa(tmp_path: Path) -> None:
    out = tmp_path / "copa"
    run(
        compose_run(
            [
                "task.limit=6",
                "task.n_pairs=12",
                "logger=wandb",
                "progress=false",
                f"paths.output_dir='{out}'",
            ]
        )
    )
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["model"]["source"] == "embedded:smollm2-135m-instruct"
    # limit caps the scored splits only: the pairs come from the whole fit split
    assert results["split_sizes"] == {"fit": 200, "select": 6, "report": 6}
    assert results["n_pairs"] == 12
    assert list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert not list(Path.home().joinpath(".local/share/wandb").glob("*"))


def test_caa_task_in_chat_form_with_open_ended_generations(tmp_path: Path) -> None:
    model_dir = tmp_path / "chat-model"
    model = make_tiny("llama")
    model.config.max_position_embeddings = 2048  # byte-level tokens: CAA prompts are long
    model.save_pretrained(model_dir)
    tok = byte_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    tok.save_pretrained(model_dir)
    out = tmp_path / "run"
    overrides = [o for o in tiny_overrides(model_dir, out) if not o.startswith("task")]
    run(
        compose_run(
            [
                *overrides,
                "task=caa_refusal",
                "task.limit=3",
                "task.max_gen_toks=4",
                "side_effects.tasks=[copa]",
                "side_effects.limit=4",
            ]
        )
    )
    # the side effect: COPA's first 4 report items, with and without the refusal vector,
    # in the run's chat form
    results = json.loads((out / "results.json").read_text())
    side = results["side_effects"]["copa"]
    assert side["split"] == "report" and side["n_items"] == 4
    assert {"acc", "acc_stderr"} <= set(side["steered"]) and "acc" in side["baseline"]
    assert "copa" in results["inputs"]["side_effects_data"]
    steered_rows = [
        json.loads(s) for s in (out / "samples_side_copa_report.jsonl").read_text().splitlines()
    ]
    base_rows = [
        json.loads(s)
        for s in (out / "samples_side_copa_report_baseline.jsonl").read_text().splitlines()
    ]
    assert len(steered_rows) == 4 and steered_rows[0]["context"].startswith("<user>")
    assert [r["loglikelihoods"] for r in steered_rows] != [r["loglikelihoods"] for r in base_rows]
    assert side["steered"]["acc"] == sum(r["acc"] for r in steered_rows) / 4
    samples = [
        json.loads(s) for s in (out / "samples_caa_refusal_select.jsonl").read_text().splitlines()
    ]
    assert samples[0]["context"].startswith("<user>") and samples[0]["continuations"] == [
        "(A)",
        "(B)",
    ]
    pairs = [json.loads(s) for s in (out / "pairs.jsonl").read_text().splitlines()]
    assert pairs[0]["prompt"].endswith("<assistant>") and pairs[0]["positive"] in ("(A)", "(B)")
    for name in ("generations_caa_refusal.jsonl", "generations_caa_refusal_baseline.jsonl"):
        rows = [json.loads(s) for s in (out / name).read_text().splitlines()]
        assert len(rows) == 3 and all(r["prompt"].startswith("<user>") for r in rows)
        assert all(isinstance(r["generation"], str) for r in rows)
    # the unsteered generations are cached for every other point of the model and prompts
    (entry,) = (tmp_path / "cache" / "generations").glob("*/generations.jsonl")
    assert entry.read_text() == (out / "generations_caa_refusal_baseline.jsonl").read_text()
    # the CAA behaviours choose by the behaviour-matching probability
    assert results["config"]["optimized_metric"] == "select/p_label"
    assert 0 < results["metrics"]["select"]["p_label"] < 1


def test_austeer_grid_is_the_authors_search_space_per_site() -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=["experiment=austeer", "paths.output_dir=/tmp/x"],
            return_hydra_config=True,
        )
    grid = cfg.hydra.sweeper.params
    assert grid["component"] == "head,hidden,residual"  # attention, ffn, layer
    assert grid["intervention.k"] == "1,2,4,8,16,32,50,64,80,100"
    assert grid["intervention.alpha"] == "5,8,10,15,20,30,50,100"
    assert cfg.intervention.name == "austeer" and cfg.task.n_pairs == 1000


def test_every_experiment_composes_with_its_grid() -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for name in options("experiment"):
            cfg = compose(
                "config",
                overrides=[f"experiment={name}", "paths.output_dir=/tmp/x"],
                return_hydra_config=True,
            )
            assert list(cfg.task.splits) == ["select"], name  # sweeps never see report
            assert cfg.hydra.sweeper.params, name
            assert FIXED_COMPONENT.get(cfg.intervention.name, cfg.component.name) == (
                cfg.component.name
            )


def test_a_primary_metric_the_task_does_not_report_fails_before_the_model_loads(
    tmp_path: Path,
) -> None:
    """copa is scored by acc (acc, acc_norm, p_label): mc2 is named with the choices before
    any model loads (a model source that does not exist is never reached)."""
    cfg = compose_run(
        [
            "task=copa",
            "task.primary_metric=mc2",
            f"model.source={tmp_path / 'no-model'}",
            "logger=none",
            f"paths.output_dir={tmp_path / 'run'}",
        ]
    )
    with pytest.raises(
        ConfigError, match=r"primary_metric='mc2'.*\['acc', 'acc_norm', 'p_label'\]"
    ):
        run(cfg)
