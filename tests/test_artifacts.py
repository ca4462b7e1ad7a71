"""Steerer artifacts are trusted only when they are what they claim: weights fingerprints and
one clear error per kind of damaged or hand-edited file.

The fingerprint checks run on every registered method (`sadi.steerers.registry.methods()`,
each built as the contract suite builds it: `tests/steerers/conftest.py`); that a saved
steerer loads back to the same tensors, parameters and steered logits is checked there
(`tests/steerers/test_contract.py`)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from sadi.core.activations import encode
from sadi.core.architectures import model_shape, weights_fingerprint
from sadi.steerers import CAA, SADI, FingerprintMismatch, Steerer
from sadi.steerers.artifacts import META_FILE, TENSORS_FILE, ArtifactError
from sadi.steerers.identity import WeightsMismatch
from sadi.steerers.registry import methods
from tests.conftest import PAIRS, TINY, byte_tokenizer, make_tiny
from tests.helpers import CONTS, PROMPTS, forward, steered
from tests.steerers.conftest import build

METHODS = sorted(methods())
# the tensors the built-in methods write, in the order their error messages list them (sorted)
TENSORS = {
    "sadi": ["delta", "direction", "mask"],
    "iti": ["accuracy", "direction", "mask", "sigma"],
    "caa": ["vectors"],
    "austeer": ["beta", "mean_diff"],
    "sas": [
        "freq_neg",
        "freq_pos",
        "mean_neg",
        "mean_pos",
        "sae.W_dec",
        "sae.W_enc",
        "sae.b_dec",
        "sae.b_enc",
    ],
}


_FITS: dict[str, dict[str, Tensor]] = {}


def fitted(method: str) -> tuple[nn.Module, Steerer]:
    """A tiny Llama (seed 0) and a steerer of `method` fitted on it (each fit runs once)."""
    model = make_tiny("llama")
    steerer = build(method)
    if method not in _FITS:
        _FITS[method] = build(method).fit(model, byte_tokenizer(), PAIRS).tensors()
    steerer._remember_model(model, len(PAIRS))
    steerer._load_tensors({k: v.clone() for k, v in _FITS[method].items()})
    return model, steerer


def saved(method: str, directory: Path) -> tuple[nn.Module, Steerer, Path]:
    model, steerer = fitted(method)
    return model, steerer, steerer.save(directory)


@contextmanager
def artifact_error(path: Path, *fragments: str) -> Iterator[None]:
    """Expect one ArtifactError whose message starts with `path` and holds `fragments`."""
    with pytest.raises(ArtifactError) as info:
        yield
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def edit_meta(directory: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    path = directory / META_FILE
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))
    return path


def edit_tensors(directory: Path, change: Callable[[dict[str, Tensor]], None]) -> Path:
    path = directory / TENSORS_FILE
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))
    return path


# ----- the weights fingerprint ------------------------------------------------------------
@pytest.mark.parametrize("family", sorted(TINY))
def test_weights_fingerprint_same_weights_equal_one_changed_value_differs(family: str) -> None:
    model = make_tiny(family)
    fingerprint = weights_fingerprint(model)
    assert re.fullmatch(r"[0-9a-f]{16}", fingerprint)
    assert weights_fingerprint(make_tiny(family)) == fingerprint
    assert weights_fingerprint(make_tiny(family, seed=1)) != fingerprint
    embedding = model.get_input_embeddings().weight  # [vocab, d_model]
    with torch.no_grad():
        embedding[-1, -1] += 1.0  # the very last element: every weight is hashed
    assert weights_fingerprint(model) != fingerprint


def test_weights_fingerprint_equal_after_save_and_reload(tmp_path: Path) -> None:
    model = make_tiny("llama")
    model.save_pretrained(tmp_path)
    again = type(model).from_pretrained(tmp_path)
    assert weights_fingerprint(again) == weights_fingerprint(model)


def test_weights_fingerprint_hashes_the_float32_copy() -> None:
    """A bf16 model and its exact float32 upcast have one fingerprint."""
    bf16 = make_tiny("qwen2").to(torch.bfloat16)
    fingerprint = weights_fingerprint(bf16)
    assert weights_fingerprint(bf16.to(torch.float32)) == fingerprint
    assert weights_fingerprint(make_tiny("qwen2")) != fingerprint  # float32 -> bf16 is lossy


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_weights_fingerprint_covers_every_weight(family: str) -> None:
    """A change to the last element of any parameter, middle layers included, is seen, also
    by a model whose fingerprint was computed (and remembered) before the change."""
    model = make_tiny(family)
    fingerprint = weights_fingerprint(model)
    names = [n for n, _ in model.named_parameters()]
    assert any(".1." in n for n in names)  # a middle decoder layer (3 layers)
    for name, weight in model.named_parameters():
        with torch.no_grad():
            weight.view(-1)[-1] += 1.0
        changed = weights_fingerprint(model)
        assert changed != fingerprint, name
        fingerprint = changed


def test_weights_fingerprint_sees_a_dense_edit_through_data() -> None:
    """A merged low-rank delta written through `.data` (PEFT's LoRA merge), which bumps no
    version counter, still changes a fingerprint remembered before it."""
    model = make_tiny("llama")
    fingerprint = weights_fingerprint(model)
    weight = model.model.layers[1].self_attn.q_proj.weight  # [out, in], a middle layer
    g = torch.Generator().manual_seed(0)
    b, a = (
        torch.randn(weight.shape[0], 2, generator=g),
        torch.randn(2, weight.shape[1], generator=g),
    )
    weight.data += 1e-3 * (b @ a)
    assert weights_fingerprint(model) != fingerprint


# ----- fingerprints at fit, load, apply and in the fit cache ------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_saved_metadata_holds_the_fingerprints(tmp_path: Path, method: str) -> None:
    """steerer.json records the fitted model's shape and weights fingerprints (no accepted
    weights yet); the loaded steerer has them, and the same metadata."""
    model, steerer, directory = saved(method, tmp_path)
    meta = json.loads((directory / META_FILE).read_text())
    assert meta["weights_fingerprint"] == weights_fingerprint(model)
    assert meta["fingerprint"] == model_shape(model).as_dict()
    assert meta["accepted_weights"] == []
    loaded = Steerer.load(directory, model)
    assert loaded.metadata() == steerer.metadata()
    assert loaded.weights_fingerprint == steerer.weights_fingerprint == weights_fingerprint(model)
    assert loaded.shape == steerer.shape == model_shape(model)


def test_the_built_in_methods_write_the_listed_tensors() -> None:
    """`TENSORS` (the expectations of the error messages below) is what the methods write."""
    assert {m: sorted(fitted(m)[1].tensors()) for m in TENSORS} == TENSORS


@pytest.mark.parametrize("method", METHODS)
def test_another_architecture_is_refused_at_load_and_apply(tmp_path: Path, method: str) -> None:
    """A steerer fitted on the tiny Llama is refused, naming the architecture, by a GPT-2,
    at load (also when other weights are allowed: that allows weights, not shapes) and at
    apply."""
    _, steerer, directory = saved(method, tmp_path)
    gpt2 = make_tiny("gpt2")
    with pytest.raises(FingerprintMismatch, match="architecture"):
        Steerer.load(directory, gpt2)
    with pytest.raises(FingerprintMismatch, match="architecture") as info:
        Steerer.load(directory, gpt2, allow_other_weights=True)
    assert not isinstance(info.value, WeightsMismatch)
    with pytest.raises(FingerprintMismatch, match="refit"):
        with steerer.apply(gpt2):
            pass


@pytest.mark.parametrize("method", METHODS)
def test_other_weights_are_refused_at_load_and_apply(tmp_path: Path, method: str) -> None:
    model, steerer, directory = saved(method, tmp_path)
    other = make_tiny("llama", seed=1)  # same architecture and sizes, other weights
    assert model_shape(other) == model_shape(model)
    fitted_fp, other_fp = weights_fingerprint(model), weights_fingerprint(other)
    expected = (
        f"this {method} steerer was fitted on 'tiny-llama' (weights fingerprint {fitted_fp}), "
        f"but the given model 'tiny-llama' has the same shape and other weights (fingerprint "
        f"{other_fp}), e.g. a fine-tuned or chat variant; refit it on this model, or, if you "
        "know the weights are equivalent, load it with "
        "Steerer.load(directory, model, allow_other_weights=True)"
    )
    with pytest.raises(WeightsMismatch) as info:
        Steerer.load(directory, other)
    assert str(info.value) == expected
    assert isinstance(info.value, FingerprintMismatch)
    with pytest.raises(WeightsMismatch, match=re.escape(expected)):
        with steerer.apply(other):
            pass
    with pytest.raises(WeightsMismatch):
        with Steerer.load(directory).apply(other):
            pass


@pytest.mark.parametrize("method", METHODS)
def test_allow_other_weights_accepts_that_model_from_then_on(tmp_path: Path, method: str) -> None:
    model, steerer, directory = saved(method, tmp_path)
    other = make_tiny("llama", seed=1)
    loaded = Steerer.load(directory, other, allow_other_weights=True)
    assert loaded.weights_fingerprint == weights_fingerprint(model)  # the fitted one stays
    assert loaded.accepted_weights == {weights_fingerprint(other)}
    batch = encode(byte_tokenizer(), PROMPTS, CONTS)
    got = steered(other, loaded, batch)
    steerer.accept_weights(other)  # the same state, vouched for
    assert torch.equal(got, steered(other, steerer, batch))
    assert not torch.equal(got, forward(other, batch))
    with loaded.apply(model):  # the fitted model is still accepted
        pass
    with pytest.raises(WeightsMismatch, match=r"also accepting \['[0-9a-f]{16}'\]"):
        with loaded.apply(make_tiny("llama", seed=2)):
            pass
    # re-saved, the accepted weights stay recorded next to the fitted fingerprint
    resaved = loaded.save(tmp_path / "again")
    meta = json.loads((resaved / META_FILE).read_text())
    assert meta["weights_fingerprint"] == weights_fingerprint(model)
    assert meta["accepted_weights"] == [weights_fingerprint(other)]
    with Steerer.load(resaved, other).apply(other):
        pass


def test_fit_key_holds_the_weights_fingerprint() -> None:
    steerer = build("sadi")
    model, other = make_tiny("llama"), make_tiny("llama", seed=1)
    key, other_key = steerer.fit_key(model, PAIRS), steerer.fit_key(other, PAIRS)
    assert key["weights_fingerprint"] == weights_fingerprint(model)
    assert key != other_key
    assert {k for k in key if key[k] != other_key[k]} == {"weights_fingerprint"}
    assert steerer.fit_key(make_tiny("llama"), PAIRS) == key


@pytest.mark.parametrize("method", METHODS)
def test_adopt_carries_the_fingerprints(method: str) -> None:
    model, steerer = fitted(method)
    steerer.record = replace(steerer.record, accepted=frozenset({"0123456789abcdef"}))
    copy = build(method).adopt(steerer)
    assert copy.shape == steerer.shape
    assert copy.weights_fingerprint == steerer.weights_fingerprint == weights_fingerprint(model)
    assert copy.accepted_weights == {"0123456789abcdef"}
    with pytest.raises(WeightsMismatch):
        with copy.apply(make_tiny("llama", seed=1)):
            pass


def test_caa_with_params_carries_the_fingerprints() -> None:
    _, caa = fitted("caa")
    assert isinstance(caa, CAA)
    moved = caa.with_params(layer=2)
    assert moved.weights_fingerprint == caa.weights_fingerprint
    with pytest.raises(WeightsMismatch):
        with moved.apply(make_tiny("llama", seed=1)):
            pass


def test_a_state_assigned_by_hand_is_refused() -> None:
    model, steerer = fitted("sadi")
    bare = build("sadi")
    assert isinstance(bare, SADI) and isinstance(steerer, SADI)
    bare.state = steerer.state
    with pytest.raises(RuntimeError, match="no weights fingerprint.*adopt"):
        with bare.apply(model):
            pass


# ----- damaged or hand-edited files: one ArtifactError naming the file ---------------------
def test_invalid_json(tmp_path: Path) -> None:
    _, _, directory = saved("sadi", tmp_path)
    path = directory / META_FILE
    path.write_text(path.read_text()[:-20])
    with artifact_error(path, "invalid JSON (", "re-save the steerer or refit it"):
        Steerer.load(directory)


def test_missing_safetensors(tmp_path: Path) -> None:
    _, _, directory = saved("sadi", tmp_path)
    (directory / TENSORS_FILE).unlink()
    with artifact_error(
        directory / TENSORS_FILE, "file missing (the directory holds ['steerer.json'])"
    ):
        Steerer.load(directory)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_safetensors(tmp_path: Path, damage: str) -> None:
    _, _, directory = saved("iti", tmp_path)
    path = directory / TENSORS_FILE
    data = path.read_bytes()
    path.write_bytes(
        {"truncated": data[: len(data) // 2], "garbage": b"x" * 100, "empty": b""}[damage]
    )
    with artifact_error(path, "not a readable safetensors file (", "truncated or damaged"):
        Steerer.load(directory)


def test_missing_method(tmp_path: Path) -> None:
    _, _, directory = saved("caa", tmp_path)
    path = edit_meta(directory, lambda m: m.pop("method"))
    with artifact_error(path, f"no 'method' field; it must name one of {METHODS}"):
        Steerer.load(directory)


def test_unknown_method(tmp_path: Path) -> None:
    _, _, directory = saved("caa", tmp_path)
    path = edit_meta(directory, lambda m: m.update(method="repe"))
    with artifact_error(path, f"unknown steering method 'repe'; known: {METHODS}"):
        Steerer.load(directory)


def test_loading_never_imports_code_outside_sadi(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A steerer.json naming a class in some module on the path: the module is not imported
    (importing runs its code); the error says to import it first."""
    code = tmp_path / "code"
    code.mkdir()
    marker = tmp_path / "imported"
    (code / "planted.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(code))
    _, _, directory = saved("caa", tmp_path)
    path = edit_meta(directory, lambda m: m.update(method="planted", **{"class": "planted.X"}))
    with artifact_error(path, "defined in 'planted', which is not imported; import it first"):
        Steerer.load(directory)
    assert not marker.exists()


def test_another_method_than_the_class_asked_for(tmp_path: Path) -> None:
    _, _, directory = saved("caa", tmp_path)
    with artifact_error(directory / META_FILE, "holds a 'caa' steerer, not 'sadi'"):
        SADI.load(directory)


@pytest.mark.parametrize("field", ["fingerprint", "weights_fingerprint"])
def test_missing_fingerprint(tmp_path: Path, field: str) -> None:
    _, _, directory = saved("sadi", tmp_path)
    path = edit_meta(directory, lambda m: m.pop(field))
    with artifact_error(
        path,
        f"no {field!r} field: it was written by an older version of sadi or edited by hand; "
        "re-save the fitted steerer with this version, or refit it",
    ):
        Steerer.load(directory)


def test_malformed_fingerprints(tmp_path: Path) -> None:
    _, _, directory = saved("sadi", tmp_path)
    path = edit_meta(directory, lambda m: m["fingerprint"].pop("d_ff"))
    with artifact_error(path, "bad 'fingerprint': ", "missing ['d_ff']"):
        Steerer.load(directory)
    _, _, directory = saved("sadi", tmp_path / "b")
    path = edit_meta(directory, lambda m: m.update(weights_fingerprint="xyz"))
    with artifact_error(path, "'weights_fingerprint' must be 16 lowercase hex characters"):
        Steerer.load(directory)


@pytest.mark.parametrize(
    "method, dropped",
    [("sadi", "delta"), ("iti", "accuracy"), ("caa", "vectors"), ("austeer", "mean_diff")],
)
def test_missing_tensors(tmp_path: Path, method: str, dropped: str) -> None:
    _, _, directory = saved(method, tmp_path)
    path = edit_tensors(directory, lambda t: t.pop(dropped))
    found = [n for n in TENSORS[method] if n != dropped]
    with artifact_error(
        path, f"a {method} steerer holds the tensors {TENSORS[method]}, found {found}"
    ):
        Steerer.load(directory)


def _widen(name: str, by: int) -> Callable[[dict[str, Tensor]], None]:
    def change(tensors: dict[str, Tensor]) -> None:
        t = tensors[name]
        tensors[name] = torch.cat([t, torch.zeros(*t.shape[:-1], by, dtype=t.dtype)], dim=-1)

    return change


@pytest.mark.parametrize(
    "method, name, expected",
    [
        # llama tiny: 3 layers, 4 heads of head_dim 8, d_model 32
        ("sadi", "delta", "tensor 'delta' has shape [3, 5], expected [3, 4]"),
        ("sadi", "mask", "tensor 'mask' has shape [3, 5], expected [3, 4]"),
        ("sadi", "direction", "tensor 'direction' has shape [3, 33], expected [3, 32]"),
        ("iti", "sigma", "tensor 'sigma' has shape [3, 5], expected [3, 4]"),
        ("iti", "direction", "tensor 'direction' has shape [3, 4, 9], expected [3, 4, 8]"),
        ("caa", "vectors", "tensor 'vectors' has shape [3, 33], expected [3, 32]"),
        # AUSteer's units: 4 heads x head_dim 8 = 32 dimensions of the o_proj input
        ("austeer", "beta", "tensor 'beta' has shape [3, 33], expected [3, 32]"),
    ],
)
def test_tensor_shapes_disagree_with_the_fingerprint(
    tmp_path: Path, method: str, name: str, expected: str
) -> None:
    _, _, directory = saved(method, tmp_path)
    path = edit_tensors(directory, _widen(name, 1))
    with artifact_error(
        path, expected, "the tensors and the fingerprint do not belong together: re-save"
    ):
        Steerer.load(directory)


@pytest.mark.parametrize("method, noun", [("sadi", "elements"), ("iti", "heads")])
def test_k_disagrees_with_the_mask(tmp_path: Path, method: str, noun: str) -> None:
    _, steerer, directory = saved(method, tmp_path)
    k = steerer.params()["k"]
    tensors_path = directory / TENSORS_FILE
    edit_meta(directory, lambda m: m.update(k=k + 1))  # k edited in steerer.json
    with artifact_error(
        tensors_path,
        f"the mask selects {k} {noun} but k={k + 1} (in steerer.json); ",
        "exactly k",
        "correct k, or refit",
    ):
        Steerer.load(directory)
    edit_meta(directory, lambda m: m.update(k=k))
    assert Steerer.load(directory).params()["k"] == k

    def select_all(tensors: dict[str, Tensor]) -> None:  # the mask edited: all 12 heads
        tensors["mask"] = torch.ones_like(tensors["mask"])

    edit_tensors(directory, select_all)
    with artifact_error(tensors_path, f"the mask selects 12 {noun} but k={k} (in steerer.json)"):
        Steerer.load(directory)


@pytest.mark.parametrize(
    "method, change, expected",
    [
        ("sadi", {"mode": "twopass"}, "mode must be one of ['online', 'faithful'], got 'twopass'"),
        ("sadi", {"k": 0}, "k must be a positive integer, got 0"),
        ("iti", {"heldout": 1.5}, "heldout must be a fraction strictly between 0 and 1"),
        ("caa", {"multiplier": "big"}, "multiplier must be a finite number, got 'big'"),
        ("austeer", {"k": 0}, "k must be a positive integer, got 0; e.g. intervention.k=16"),
        ("austeer", {"variant": "top"}, "'fixed_strength'], got 'top'"),
    ],
)
def test_bad_hyperparameter(
    tmp_path: Path, method: str, change: dict[str, Any], expected: str
) -> None:
    _, _, directory = saved(method, tmp_path)
    path = edit_meta(directory, lambda m: m.update(change))
    with artifact_error(path, expected):
        Steerer.load(directory)


def test_missing_hyperparameter(tmp_path: Path) -> None:
    _, _, directory = saved("sadi", tmp_path)
    path = edit_meta(directory, lambda m: m.pop("variant"))
    with artifact_error(path, "no value for the hyperparameters ['variant']"):
        Steerer.load(directory)


def test_non_finite_tensor(tmp_path: Path) -> None:
    _, _, directory = saved("caa", tmp_path)
    path = edit_tensors(directory, lambda t: t["vectors"].view(-1).__setitem__(0, float("nan")))
    with artifact_error(path, "tensor 'vectors' holds NaN or infinite values"):
        Steerer.load(directory)
