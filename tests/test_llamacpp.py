"""A CAA control vector exported by sadi, run by llama.cpp itself (llama-cpp-python, built by
`make test`) on the embedded SmolLM2 GGUF: the log-prob shift (steered - unsteered) of every
token of a text agrees with sadi's on the HF model within the quantisation error, measured
on the unsteered log-probs (the tolerance's justification: docs/guides/llamacpp.md)."""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sadi.core.models import _smollm2_gguf
from sadi.data.pairs import make_pairs
from sadi.data.tasks import load_task
from sadi.llamacpp.control_vector import (
    export_control_vector,
    import_control_vector,
    read_control_vector,
)
from sadi.steerers.caa import CAA

pytestmark = pytest.mark.slow

TEXT = (
    "The weather today is sunny and warm, so we decided to go to the beach and swim in "
    "the sea until the evening."
)


def _hf_logprobs(model: Any, steerer: Any, ids: list[int]) -> np.ndarray:
    x = torch.tensor([ids])
    with torch.no_grad():
        if steerer is None:
            logits = model(input_ids=x).logits[0]
        else:
            with steerer.apply(model):
                logits = model(input_ids=x).logits[0]
    lp = torch.log_softmax(logits.double(), -1)
    return np.array([float(lp[i - 1, ids[i]]) for i in range(1, len(ids))])


class LlamaCpp:
    """llama.cpp on the embedded GGUF: token log-probs, with or without a control vector."""

    def __init__(self) -> None:
        import llama_cpp

        self.lib = llama_cpp
        self.llm = llama_cpp.Llama(
            model_path=str(_smollm2_gguf()), logits_all=True, n_ctx=256, verbose=False
        )

    def set_control_vector(self, path: Path | None, n_layer: int, n_embd: int) -> None:
        """Load the control vector file as llama.cpp's loader lays it out: one n_embd block
        per layer from layer 1 on, `direction.N` in block N - 1 (None: clear it)."""
        ctx = self.llm._ctx.ctx
        if path is None:
            assert self.lib.llama_set_adapter_cvec(ctx, None, 0, n_embd, -1, -1) == 0
            return
        vectors, _ = read_control_vector(path)
        data = np.zeros(n_layer * n_embd, dtype=np.float32)
        for layer, v in vectors.items():
            data[(layer - 1) * n_embd : layer * n_embd] = v.numpy()
        self._data = data  # kept alive while llama.cpp may read it
        ptr = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        assert self.lib.llama_set_adapter_cvec(ctx, ptr, data.size, n_embd, 1, n_layer) == 0

    def logprobs(self, ids: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(ids)
        scores = np.array(self.llm.scores[: len(ids)], dtype=np.float64)
        top = scores.max(-1, keepdims=True)
        lp = scores - top - np.log(np.exp(scores - top).sum(-1, keepdims=True))
        return np.array([lp[i - 1, ids[i]] for i in range(1, len(ids))])


def test_a_caa_control_vector_shifts_llama_cpp_as_it_shifts_sadi(
    smollm2: tuple, tmp_path: Path
) -> None:
    model, tok = smollm2
    pairs = make_pairs(load_task("copa").splits["fit"], n_pairs=16, seed=0)
    caa = CAA(layer=12, multiplier=4.0, positions="all", progress=False).fit(model, tok, pairs)
    path = export_control_vector(caa, tmp_path / "caa.gguf")
    ids = list(tok(TEXT)["input_ids"])
    cpp = LlamaCpp()
    cpp.logprobs(ids)  # a first evaluation, unrecorded
    assert cpp.llm.tokenize(TEXT.encode(), add_bos=False) == ids  # the same tokens

    hf_plain, hf_steered = _hf_logprobs(model, None, ids), _hf_logprobs(model, caa, ids)
    shape = caa.fitted_shape()
    cpp_plain = cpp.logprobs(ids)
    cpp.set_control_vector(path, shape.n_layers, shape.d_model)
    cpp_steered = cpp.logprobs(ids)
    cpp.set_control_vector(None, shape.n_layers, shape.d_model)
    np.testing.assert_allclose(cpp.logprobs(ids), cpp_plain, rtol=0, atol=1e-6)  # cleared

    assert np.array_equal(cpp.logprobs(ids), cpp_plain)  # llama.cpp is deterministic here

    def rms(x: np.ndarray) -> float:
        return float(np.sqrt(np.mean(np.square(x))))

    # llama.cpp's Q4_1 arithmetic against float32 on the same (dequantised) weights: each
    # log-prob carries an error of about this size, a shift (a difference of two) up to
    # sqrt(2) times it when the two errors are independent, less when they correlate
    quantisation = rms(cpp_plain - hf_plain)
    tolerance = float(np.sqrt(2)) * quantisation
    shift_sadi, shift_cpp = hf_steered - hf_plain, cpp_steered - cpp_plain
    assert rms(shift_sadi) > 3 * tolerance  # the steering moves the text well beyond it
    error = rms(shift_cpp - shift_sadi)
    print(f"quantisation {quantisation:.3f}, shift {rms(shift_sadi):.3f}, error {error:.3f}")
    assert rms(shift_cpp - shift_sadi) <= tolerance, (rms(shift_cpp - shift_sadi), tolerance)
    # the same vector one layer off does not agree: the file's layer mapping is checked too
    for other in (11, 13):
        shifted = _hf_logprobs(model, caa.with_params(layer=other), ids) - hf_plain
        print(f"layer {other}: error rms {rms(shift_cpp - shifted):.3f}")
        assert rms(shift_cpp - shifted) > tolerance, other

    # and back: the file imported as CAA steers the HF model as the fitted CAA does
    back = import_control_vector(path, model)
    np.testing.assert_allclose(_hf_logprobs(model, back, ids), hf_steered, rtol=0, atol=1e-5)
