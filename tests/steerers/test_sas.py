"""SAS on tiny random models with random SAEs: statistics and the steering vector against
hand computations, exact edits (code space with the error term kept, decoder directions),
positions in scoring and generation, artifacts carrying the SAE, bad input.

What every method owes (hooks, identity, determinism, save / load, `with_params`, batching,
scoring = generation) is checked in `test_contract.py` on SAS's default configuration
(code space, "response") with a random TopK SAE."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import sadi.core.activations as activations_module
from sadi.core.activations import encode
from sadi.core.architectures import model_shape
from sadi.data.pairs import Pair
from sadi.sae import save_sae
from sadi.steerers import SAS, Steerer
from sadi.steerers.sas import SASState, code_statistics, random_features, steering_vector
from tests.conftest import PAIRS, byte_tokenizer, make_tiny
from tests.helpers import CONTS, PROMPTS, forward, recording, run_then_lm_eval, steered
from tests.test_sae import random_sae

_FITS: dict[tuple[str, str], tuple[nn.Module, SAS]] = {}


def fitted(family: str, architecture: str = "topk", **params: Any) -> tuple[nn.Module, SAS]:
    key = (family, architecture)
    if key not in _FITS:
        model = make_tiny(family)
        sae = random_sae(architecture, d_in=model_shape(model).d_model, d_sae=64, k=8, layer=1)
        sas = SAS(sae=sae, tau=0.0, lam=2.0, progress=False).fit(model, byte_tokenizer(), PAIRS)
        _FITS[key] = (model, sas)
    model, sas = _FITS[key]
    return model, sas.with_params(**params)


def test_statistics_and_vector_by_hand() -> None:
    pos = torch.tensor([[1.0, 0.0, 2.0, 0.0], [3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 4.0, 1.0]])
    neg = torch.tensor([[0.0, 5.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 7.0, 0.0, 0.0]])
    freq_p, mean_p = code_statistics(pos)
    freq_n, mean_n = code_statistics(neg)
    assert freq_p.tolist() == pytest.approx([2 / 3, 0, 2 / 3, 1 / 3])
    assert mean_p.tolist() == pytest.approx([2.0, 0.0, 3.0, 1.0])  # over non-zero rows only
    assert freq_n.tolist() == pytest.approx([0, 2 / 3, 1 / 3, 0])
    assert mean_n.tolist() == pytest.approx([0.0, 6.0, 1.0, 0.0])
    state = SASState(freq_p, freq_n, mean_p, mean_n)
    # tau 0: latent 2 is non-zero on both sides -> dropped from both
    assert steering_vector(state, 0.0).tolist() == pytest.approx([2.0, -6.0, 0.0, 1.0])
    # tau 0.5: latent 3 (1/3 of positives) and latent 2 on the negative side (1/3) filtered;
    # latent 2 then survives on the positive side only
    assert steering_vector(state, 0.5).tolist() == pytest.approx([2.0, -6.0, 3.0, 0.0])
    assert steering_vector(state, 1.0).tolist() == [0.0, 0.0, 0.0, 0.0]


def test_fit_encodes_the_read_position_of_layer_l(monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_tiny("llama")
    sae = random_sae("topk", d_in=32, d_sae=64, k=8, layer=2)
    n = 5
    acts = torch.randn(2 * n, 3, 32, generator=torch.Generator().manual_seed(4))
    seen: dict[str, Any] = {}

    def fake(*args: Any, **kw: Any) -> Tensor:
        seen.update(kw)
        return acts

    monkeypatch.setattr(activations_module, "read_activations", fake)
    pairs = [Pair(f"p{i}", " a", " b", str(i)) for i in range(n)]
    sas = SAS(sae=sae, read_offset=-1, progress=False).fit(model, byte_tokenizer(), pairs)
    assert seen["policy"] == "last_token" and seen["offset"] == -1
    assert sas.layer == 2  # from the SAE's hook name
    codes = sae.encode(acts[:, 2])
    for got, want in zip(
        (sas.fitted_state().freq_pos, sas.fitted_state().mean_neg),
        (code_statistics(codes[:n])[0], code_statistics(codes[n:])[1]),
    ):
        assert torch.equal(got, want)


@pytest.mark.parametrize("architecture", ["standard", "jumprelu", "topk"])
@pytest.mark.parametrize("positions", ["response", "all"])
def test_code_space_edit_exact(family: str, architecture: str, positions: str) -> None:
    model, sas = fitted(family, architecture, lam=3.0, positions=positions)
    batch = encode(byte_tokenizer(), PROMPTS, CONTS, padding_side="left")
    cells = batch.layout.mask(positions)  # type: ignore[arg-type]
    with recording(model, "residual") as before:
        with sas.apply(model) as handle:
            handle.set_layout(batch.layout)
            with recording(model, "residual") as after:
                forward(model, batch)
    sae = sas.sae()
    a = before[1][cells]
    z = sae.encode(a)
    steered_code = torch.relu(z + 3.0 * sas.vector())  # ReLU only, TopK not re-applied
    want = a + (steered_code - z) @ sae.W_dec
    torch.testing.assert_close(after[1][cells], want, atol=0, rtol=0)
    # = g(ReLU(f(a) + lambda s)) + (a - g(f(a))), the formula, up to rounding
    formula = sae.decode(steered_code) + (a - sae.decode(z))
    torch.testing.assert_close(after[1][cells], formula, atol=1e-4, rtol=1e-4)
    assert torch.equal(after[1][~cells], before[1][~cells])
    assert torch.equal(after[0], before[0])  # only layer L is edited
    assert not torch.equal(after[1][cells], a)


def test_decoder_mode_adds_lambda_s_w_dec(family: str) -> None:
    model, sas = fitted(family, "topk", lam=-2.0, mode="decoder")
    batch = encode(byte_tokenizer(), PROMPTS, CONTS)
    cells = batch.layout.mask("response")
    with recording(model, "residual") as before:
        with sas.apply(model) as handle:
            handle.set_layout(batch.layout)
            with recording(model, "residual") as after:
                forward(model, batch)
    delta = -2.0 * (sas.vector() @ sas.sae().W_dec)
    assert torch.equal(after[1][cells], before[1][cells] + delta)
    assert torch.equal(after[1][~cells], before[1][~cells])


def test_generation_edits_the_prefill_last_token_and_every_decoded_token() -> None:
    model, sas = fitted("llama", "topk", lam=3.0)
    seen: list[tuple[Tensor, Tensor]] = []
    with recording(model, "residual") as before:
        with sas.apply(model):
            with recording(model, "residual") as after:

                def grab(*_: Any) -> None:
                    seen.append((before[1].clone(), after[1].clone()))

                handle = model.model.layers[2].register_forward_pre_hook(grab)
                try:
                    model.generate(
                        torch.tensor([[5, 9, 12, 30]]),
                        max_new_tokens=3,
                        do_sample=False,
                        pad_token_id=0,
                    )
                finally:
                    handle.remove()
    prefill_before, prefill_after = seen[0]
    assert torch.equal(prefill_after[0, :3], prefill_before[0, :3])  # the prompt before it
    assert not torch.equal(prefill_after[0, 3], prefill_before[0, 3])  # its last token
    for b, a in seen[1:]:
        assert b.shape[1] == 1 and not torch.equal(a, b)  # every decoded token


def test_saved_steerer_carries_its_sae(tmp_path: Path) -> None:
    """A JumpReLU SAE (threshold included) travels inside the artifact, recorded by its
    fingerprint and architecture: the loaded steerer edits as the saved one."""
    model, sas = fitted("gemma3", "jumprelu", lam=1.5, tau=0.2)
    directory = sas.save(tmp_path / "s")
    loaded = Steerer.load(directory, model)
    assert isinstance(loaded, SAS) and loaded.params() == sas.params()
    batch = encode(byte_tokenizer(), PROMPTS, CONTS)
    assert torch.equal(steered(model, loaded, batch), steered(model, sas, batch))
    meta = (directory / "steerer.json").read_text()
    assert '"sae_fingerprint"' in meta and '"architecture": "jumprelu"' in meta


def test_fit_key_holds_the_sae_by_content_not_path(tmp_path: Path) -> None:
    model = make_tiny("llama")
    sae = random_sae("topk", d_in=32, layer=1)
    one, two = save_sae(sae, tmp_path / "one"), save_sae(sae, tmp_path / "two")
    other = save_sae(random_sae("topk", d_in=32, layer=1, seed=5), tmp_path / "other")
    key = SAS(sae=one).fit_key(model, PAIRS)
    assert SAS(sae=two).fit_key(model, PAIRS) == key
    assert SAS(sae=one, lam=9.0, tau=0.5).fit_key(model, PAIRS) == key  # apply parameters
    assert SAS(sae=other).fit_key(model, PAIRS) != key


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"component": "head"}, "SAS steers \\['residual'\\]"),
        ({"tau": 1.5}, r"tau=1.5 is a frequency threshold: choose 0 <= tau <= 1"),
        ({"lam": float("nan")}, "lam must be a finite number"),
        ({"mode": "latent"}, r"mode must be one of \['code', 'decoder'\]"),
        ({"read_offset": 1}, "read_offset must be an integer <= 0"),
        ({"layer": -1}, "layer must be a non-negative integer"),
        ({"sae": "trained", "sae_train": {"width": 3}}, r"unknown: \['width'\]"),
        ({"sae": "/some/sae", "sae_train": {"k": 3}}, "applies to sae='trained'"),
    ],
)
def test_bad_hyperparameters(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SAS(**{"sae": None, **kwargs})


def test_sae_that_does_not_fit_the_model() -> None:
    model = make_tiny("llama")  # d_model 32, 3 layers
    with pytest.raises(ValueError, match="SAS needs an SAE: pass sae="):
        SAS(sae=None).fit(model, byte_tokenizer(), PAIRS)
    with pytest.raises(
        ValueError, match="d_in=16, but this model's residual stream has d_model=32"
    ):
        SAS(sae=random_sae(d_in=16)).fit(model, byte_tokenizer(), PAIRS)
    with pytest.raises(ValueError, match="layer=2 but the SAE reads layer 1"):
        SAS(sae=random_sae(layer=1), layer=2).fit(model, byte_tokenizer(), PAIRS)
    with pytest.raises(ValueError, match="does not say which layer it reads"):
        SAS(sae=random_sae(layer=None)).fit(model, byte_tokenizer(), PAIRS)
    with pytest.raises(ValueError, match="layer=5 is out of range"):
        SAS(sae=random_sae(layer=None), layer=5).fit(model, byte_tokenizer(), PAIRS)


@pytest.mark.slow
def test_smollm2_small_trained_sae_and_sas_move_scores_and_generation_agrees(
    smollm2: tuple, tmp_path: Path
) -> None:
    """A small TopK SAE trained offline on SmolLM2's layer 15 (fit splits only), then SAS
    fitted from BoolQ pairs: it moves one-token answer scores, and scoring equals
    teacher-forced generation under steering."""
    from sadi.data.pairs import make_pairs
    from sadi.data.tasks import load_task
    from sadi.eval.lm import SteeredLM
    from sadi.sae.train import TrainConfig, train_sae
    from tests.helpers import generated_logprob, loglikelihood_requests

    model, tok = smollm2
    cfg = TrainConfig(
        layer=15, expansion=2, k=16, tokens=20_000, epochs=8, lr=1e-3, tasks=("boolq",)
    )
    sae, entry, figures = train_sae(model, tok, cfg, cache_dir=tmp_path / "cache", progress=False)
    assert figures["held_out_variance_explained"] > 0.3 and figures["held_out_l0"] <= 16
    task = load_task("boolq")
    sas = SAS(sae=sae, tau=0.05, lam=8.0, progress=False)
    sas.fit(model, tok, make_pairs(task.splits["fit"], n_pairs=16))
    assert bool((sas.vector() != 0).any())
    items = task.splits["select"][:3]
    reqs = loglikelihood_requests([(it.question, ch) for it in items for ch in it.choices])
    plain = SteeredLM(model, tokenizer=tok, batch_size=8, device="cpu")
    base = torch.tensor([ll for ll, _ in plain.loglikelihood(reqs, disable_tqdm=True)])
    lm = SteeredLM(model, steerer=sas, tokenizer=tok, batch_size=8, device="cpu")
    got = torch.tensor([ll for ll, _ in lm.loglikelihood(reqs, disable_tqdm=True)])
    assert float((got - base).abs().max()) > 1e-3
    ctx, cont = lm._encode_pair(*reqs[0].arguments)
    torch.testing.assert_close(
        got[0], torch.tensor(generated_logprob(model, sas, ctx, cont)), atol=1e-4, rtol=0
    )

    # end to end: `python -m sadi.run intervention=sas sae=trained`, then `sadi-lm-eval`
    # with the saved steerer (which carries the SAE) reproduces the run's scores
    out, results = run_then_lm_eval(
        tmp_path,
        [
            "intervention=sas",
            # sae=trained with this config: the SAE trained above, from the run's cache
            "intervention.sae=trained",
            "intervention.layer=15",
            "intervention.sae_train={expansion:2,k:16,tokens:20000,epochs:8,lr:0.001,"
            "tasks:[boolq]}",
            "intervention.tau=0.05",
            "intervention.lam=8",
            "task.n_pairs=16",
        ],
    )
    features = json.loads((out / "steerer" / "features.json").read_text())
    assert features["n_nonzero"] > 0 and features["examples_from"] == str(entry)
    first = features["features"][0]
    assert abs(first["s"]) == max(abs(f["s"]) for f in features["features"])
    assert first["examples"] and {"token", "context", "value"} <= set(first["examples"][0])
    from sadi.report import main as report_main

    assert report_main([str(out), "--out", str(tmp_path / "report"), "--resamples", "50"]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## SAS features" in md and f"| {first['latent']} |" in md
    # the report names the SAE steered through, with its quality figures
    ve = figures["held_out_variance_explained"]
    assert f"SAE `{entry.name}`: held-out variance explained {ve:.3f}" in md


def test_an_empty_steering_vector_is_an_error_not_a_silent_no_op() -> None:
    model, sas = fitted("llama", "topk", tau=1.0)  # no latent fires on every example
    assert not bool((sas.vector() != 0).any())
    with pytest.raises(ValueError, match=r"tau=1.0 leaves the steering vector s empty"):
        steered(model, sas, encode(byte_tokenizer(), PROMPTS, CONTS))


def test_an_sae_trained_by_sadi_on_another_model_is_refused(tmp_path: Path) -> None:
    from sadi.sae.train import TrainConfig, train_sae

    trained_on = make_tiny("llama", seed=3)
    cfg = TrainConfig(
        layer=1, expansion=2, k=4, tokens=2000, epochs=1, tasks=("copa",), collect_dtype="float32"
    )
    sae, _, _ = train_sae(trained_on, byte_tokenizer(), cfg, cache_dir=tmp_path, progress=False)
    SAS(sae=sae, progress=False).fit(trained_on, byte_tokenizer(), PAIRS)  # its own model: fine
    with pytest.raises(ValueError, match="trained by sadi on a model with weights fingerprint"):
        SAS(sae=sae, progress=False).fit(make_tiny("llama"), byte_tokenizer(), PAIRS)


# ----- batching ----------------------------------------------------------------------------
@pytest.mark.parametrize("architecture", ["standard", "topk"])
def test_batched_fit_equals_one_by_one(family: str, architecture: str) -> None:
    """Fitting in batches of 4 (padded) gives the statistics of fitting one pair at a time
    (frequencies exactly; means to float rounding of the codes)."""
    model = make_tiny(family)
    tok = byte_tokenizer()
    sae = random_sae(architecture, d_in=model_shape(model).d_model, d_sae=64, k=8, layer=1)
    one = SAS(sae=sae, tau=0.0, lam=2.0, batch_size=1, progress=False).fit(model, tok, PAIRS)
    many = SAS(sae=sae, tau=0.0, lam=2.0, batch_size=4, progress=False).fit(model, tok, PAIRS)
    st1, st4 = one.fitted_state(), many.fitted_state()
    # the codes may differ in the last bits; frequencies count non-zeros, so equal
    assert torch.equal(st1.freq_pos, st4.freq_pos) and torch.equal(st1.freq_neg, st4.freq_neg)
    torch.testing.assert_close(st1.mean_pos, st4.mean_pos, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(st1.mean_neg, st4.mean_neg, atol=1e-4, rtol=1e-4)


# ----- interpretability --------------------------------------------------------------------
def test_top_features_by_abs_s_with_their_examples(tmp_path: Path) -> None:
    """top_features orders latents by |s| (ties: lower index), names the side and carries the
    examples of the SAE directory's features.json; the steerer writes them as features.json."""
    model = make_tiny("llama")
    sae = random_sae("topk", d_in=32, d_sae=6, k=2, layer=1)
    directory = save_sae(sae, tmp_path / "sae")
    examples = {
        str(c): [{"value": 9.0 - c, "token": f"t{c}", "context": "ctx ", "text": c}]
        for c in range(6)
    }
    (directory / "features.json").write_text(json.dumps({"top": 1, "latents": examples}))
    sas = SAS(sae=directory, tau=0.5, lam=1.0, progress=False)
    sas._remember_model(model, 3)
    sas.state = SASState(
        freq_pos=torch.tensor([1.0, 0.9, 0.1, 0.0, 0.6, 0.7]),
        freq_neg=torch.tensor([0.0, 0.0, 0.0, 0.8, 0.0, 0.7]),
        mean_pos=torch.tensor([2.0, 3.0, 5.0, 0.0, 2.0, 1.0]),
        mean_neg=torch.tensor([0.0, 0.0, 0.0, 3.0, 0.0, 4.0]),
    )
    # s: latent 0 +2, 1 +3, 2 filtered (freq 0.1), 3 -3, 4 +2, 5 shared -> 0
    assert sas.vector().tolist() == [2.0, 3.0, 0.0, -3.0, 2.0, 0.0]
    top = sas.top_features(n=10)
    assert [f["latent"] for f in top] == [1, 3, 0, 4]
    assert [f["side"] for f in top] == ["positive", "negative", "positive", "positive"]
    assert top[1]["freq_neg"] == pytest.approx(0.8) and top[1]["mean_neg"] == 3.0
    assert top[0]["examples"] == examples["1"]
    sas.write_extras(tmp_path)
    body = json.loads((tmp_path / "features.json").read_text())
    assert (body["n_nonzero"], body["n_positive"], body["n_negative"]) == (4, 3, 1)
    assert body["features"] == top and body["examples_from"] == str(directory)
    # an SAE passed as a module (no directory): the examples are unknown, not empty
    bare = SAS(sae=sae, tau=0.5, progress=False)
    bare.state = sas.state
    assert all(f["examples"] is None for f in bare.top_features())


def test_report_shows_the_sas_features_of_a_run(tmp_path: Path) -> None:
    from sadi.report import feature_sections
    from sadi.report.records import RunRecord

    _, sas = fitted("llama")
    steerer_dir = sas.save(tmp_path / "run" / "steerer")
    assert (steerer_dir / "features.json").is_file()
    rec = RunRecord(
        run_dir=tmp_path / "run",
        task="copa",
        intervention="sas",
        component="residual",
        model="tiny",
        metric="acc",
        params=sas.params(),
        metrics={},
        baseline_metrics={},
        steered=True,
    )
    assert rec.steerer_dir == steerer_dir
    records = [rec]
    ((title, md),) = feature_sections(records)
    assert title.startswith("SAS features") and "(no examples: the SAE has no features.json)" in md
    first = sas.top_features()[0]
    assert f"| {first['latent']} | {first['s']:+.2f} |" in md


def test_a_steerer_whose_sae_tensors_are_not_the_recorded_sae_is_refused(
    tmp_path: Path,
) -> None:
    model, sas = fitted("llama")
    directory = sas.save(tmp_path / "s")
    other = SAS(sae=random_sae("topk", d_in=32, d_sae=64, k=8, layer=1, seed=9), progress=False)
    other.state = sas.state
    other.record = sas.record
    forged = tmp_path / "forged"
    other.save(forged)
    # the other SAE's tensors under this steerer's steerer.json (which records its SAE)
    (forged / "steerer.json").write_text((directory / "steerer.json").read_text())
    with pytest.raises(ValueError, match="the files do not belong together"):
        Steerer.load(forged, model)


def test_sae_trained_is_made_offline_at_fit_and_keyed_by_its_training(tmp_path: Path) -> None:
    """sae="trained": fit trains the default TopK SAE of the layer (middle layer when layer
    is null) in the run's cache; the fit key is the SAE's training key, the same before and
    after the fit, and a steerer that adopts the cached fit finds the SAE's examples."""
    model = make_tiny("llama")  # 3 layers: the middle one is 1
    tok = byte_tokenizer()
    small = {"tokens": 3000, "epochs": 1, "tasks": ["copa"], "collect_dtype": "float32"}
    sas = SAS(sae="trained", sae_train=small, tau=0.0, lam=2.0, progress=False)
    sas.use_paths(tmp_path, None)
    key = sas.fit_key(model, PAIRS)
    assert key["sae_training"]["config"]["layer"] == 1 and "sae_fingerprint" not in key
    with pytest.raises(RuntimeError, match="sae=trained: the SAE is trained by fit"):
        sas.sae()
    sas.fit(model, tok, PAIRS)
    assert sas.layer == 1 and sas.sae().cfg.layer == 1
    assert sas.sae().d_sae == 8 * 32 and sas.sae().cfg.k == 32
    (entry,) = [p for p in (tmp_path / "saes").iterdir() if p.is_dir()]
    assert json.loads((entry / "key.json").read_text()) == json.loads(
        json.dumps(key["sae_training"])
    )
    assert sas.feature_examples() is not None
    saved = sas.save(tmp_path / "steerer")
    again = SAS(sae="trained", sae_train=small, tau=0.0, lam=2.0, progress=False)
    again.use_paths(tmp_path, None)
    assert again.fit_key(model, PAIRS) == key
    again.adopt(Steerer.load(saved, model))
    assert again._sae_dir == entry and again.feature_examples() == sas.feature_examples()
    batch = encode(tok, PROMPTS, CONTS)
    assert torch.equal(steered(model, again, batch), steered(model, sas, batch))


def test_random_features_ablation_keeps_the_values_on_random_latents() -> None:
    s = torch.tensor([0.0, 2.0, 0.0, -3.0, 0.0, 0.0, 1.5, 0.0])
    r = random_features(s, seed=3)
    # the values land, in order, on the first 3 latents of the seeded permutation
    latents = torch.randperm(8, generator=torch.Generator().manual_seed(3))[:3]
    assert r[latents].tolist() == [2.0, -3.0, 1.5]
    assert int((r != 0).sum()) == 3 and torch.equal(random_features(s, seed=3), r)
    model, sas = fitted("llama")
    ablation = sas.with_params(variant="random", seed=1)
    assert ablation.state is sas.state  # one fit serves both
    v, a = sas.vector(), ablation.vector()
    assert int((a != 0).sum()) == int((v != 0).sum())
    assert sorted(a[a != 0].tolist()) == sorted(v[v != 0].tolist())
    assert not torch.equal(a, v)
    batch = encode(byte_tokenizer(), PROMPTS, CONTS)
    assert not torch.equal(steered(model, ablation, batch), steered(model, sas, batch))
    with pytest.raises(ValueError, match=r"variant must be one of \['sas', 'random'\]"):
        SAS(sae=None, variant="shuffled")  # type: ignore[arg-type]
