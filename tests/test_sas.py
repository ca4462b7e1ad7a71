"""SAS on tiny random models with random SAEs: statistics and the steering vector against
hand computations, exact edits (code space with the error term kept, decoder directions),
positions in scoring and generation, lambda = 0, artifacts carrying the SAE, bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import sadi.steerers.sas as sas_module
from sadi.activations import encode
from sadi.architectures import model_shape
from sadi.pairs import Pair
from sadi.sae import save_sae
from sadi.steerers import SAS, Steerer
from sadi.steerers.sas import SASState, code_statistics, steering_vector
from tests.conftest import PAIRS, byte_tokenizer, make_tiny
from tests.helpers import CONTS, PROMPTS, count_hooks, forward, recording, steered
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

    monkeypatch.setattr(sas_module, "read_activations", fake)
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


def test_lambda_zero_is_bit_identical_and_hooks_go(family: str) -> None:
    model, sas = fitted(family, "jumprelu", lam=0.0)
    batch = encode(byte_tokenizer(), PROMPTS, CONTS)
    n = count_hooks(model)
    assert torch.equal(steered(model, sas, batch), forward(model, batch))
    with pytest.raises(RuntimeError, match="boom"), sas.with_params(lam=1.0).apply(model):
        raise RuntimeError("boom")
    assert count_hooks(model) == n


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
        ({"component": "head"}, "component must be 'residual'"),
        ({"tau": 1.5}, r"tau=1.5 is a frequency threshold: choose 0 <= tau <= 1"),
        ({"lam": float("nan")}, "lam must be a finite number"),
        ({"mode": "latent"}, r"mode must be one of \['code', 'decoder'\]"),
        ({"read_offset": 1}, "read_offset must be an integer <= 0"),
        ({"layer": -1}, "layer must be a non-negative integer"),
    ],
)
def test_bad_hyperparameters(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SAS(**kwargs)


def test_sae_that_does_not_fit_the_model() -> None:
    model = make_tiny("llama")  # d_model 32, 3 layers
    with pytest.raises(ValueError, match="SAS needs an SAE: pass sae="):
        SAS().fit(model, byte_tokenizer(), PAIRS)
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
    from sadi.lm_eval_model import SteeredLM
    from sadi.pairs import make_pairs
    from sadi.sae.train import TrainConfig, train_sae
    from sadi.tasks import load_task
    from tests.helpers import loglikelihood_requests
    from tests.test_one_model import generated_logprob

    model, tok = smollm2
    cfg = TrainConfig(
        layer=15, expansion=2, k=16, tokens=20_000, epochs=8, lr=1e-3, tasks=("boolq",)
    )
    sae, _, figures = train_sae(model, tok, cfg, cache_dir=tmp_path, progress=False)
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
