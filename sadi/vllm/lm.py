"""lm-evaluation-harness model `sadi-vllm`: lm-eval's vLLM model with sadi's steering. Thin.

lm-eval's `VLLM` builds the engine (with sadi's worker extension and settings passed
through to `LLM`), tokenizes, batches generations and parses prompt log-probs; this class
adds the steering: every request it sends names the steerer (`steerer`, installed by name
on the engine) and, for a scored row, its context length, so the steered cells are the HF
backend's (`sadi.vllm.worker`). `with_steerer(name)` gives another condition on the same
engine (the unsteered baseline and a sweep's points share one vLLM).

Example:
    >>> lm = SteeredVLLMLM("path/to/model", fingerprint=weights_fingerprint(hf_model))
    >>> lm.engine.install("caa", caa)
    >>> steered = lm.with_steerer("caa")
    >>> steered.loglikelihood(requests)
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

from lm_eval.api.registry import register_model
from lm_eval.models.vllm_causallms import VLLM
from tqdm import tqdm

from sadi.vllm.engine import (
    Request,
    SteeredVLLM,
    VLLMSettings,
    check_version,
    engine_args,
    prepare_environment,
)

# lm-eval VLLM's methods this class overrides or calls, with the parameters it relies on,
# and the attributes its constructor must have set (checked at start-up: a change in a new
# lm-eval fails here, by name, not later in a wrong score)
_VLLM_METHODS = {
    "_model_generate": ("self", "requests", "generate", "sampling_params"),
    "_parse_logprobs": ("tokens", "outputs", "ctxlen"),
    "modify_gen_kwargs": ("gen_kwargs", "eos", "default_max_gen_toks"),
    "_loglikelihood_tokens": ("self", "requests", "disable_tqdm"),
}
_VLLM_ATTRIBUTES = ("model", "max_length", "batch_size", "cache_hook")


def check_lm_eval_vllm(lm: Any = None) -> None:
    """Fail loudly where this lm-eval's VLLM differs from what SteeredVLLMLM relies on:
    the methods' parameters (the class) and, given `lm`, the attributes its constructor
    sets."""
    found = {
        name: tuple(inspect.signature(getattr(VLLM, name)).parameters)
        if hasattr(VLLM, name)
        else None
        for name in _VLLM_METHODS
    }
    differ = {n: p for n, p in found.items() if p != _VLLM_METHODS[n]}
    missing = [a for a in _VLLM_ATTRIBUTES if lm is not None and not hasattr(lm, a)]
    if differ or missing:
        import lm_eval

        raise RuntimeError(
            f"lm-eval {getattr(lm_eval, '__version__', '?')}'s VLLM differs from what sadi's "
            f"vLLM backend relies on: methods {differ} (expected {_VLLM_METHODS}), missing "
            f"attributes {missing}; install the tested lm-eval (constraints-vllm.txt)"
        )


@register_model("sadi-vllm")
class SteeredVLLMLM(VLLM):  # type: ignore[misc]
    """lm-eval's VLLM whose requests run under an installed steerer (None: unsteered).

    Args:
        pretrained: the model directory (or hub id), the same files as the HF model's.
        fingerprint: `weights_fingerprint` of the HF model read from those files.
        dtype: "float32", "bfloat16" or "float16".
        settings: `VLLMSettings` (context, KV-cache memory, self-test tolerance, ...).
        steerer: the name of an installed steerer, or None.
        progress: progress bars.
        **kwargs: passed to lm-eval's VLLM (batch_size, max_gen_toks, ...).
    """

    def __init__(
        self,
        pretrained: str,
        fingerprint: str,
        dtype: str = "float32",
        settings: VLLMSettings | None = None,
        steerer: str | None = None,
        progress: bool = True,
        **kwargs: Any,
    ) -> None:
        settings = settings or VLLMSettings()
        check_version(settings.allow_untested)
        check_lm_eval_vllm()
        prepare_environment(settings)
        args = engine_args(settings, dtype)
        args.pop("max_model_len")
        super().__init__(
            pretrained=pretrained,
            max_model_len=settings.max_model_len,
            **{**args, **kwargs},
        )
        check_lm_eval_vllm(self)
        self.engine = SteeredVLLM(pretrained, fingerprint, dtype, settings, llm=self.model)
        self.steerer = steerer
        self.progress = progress

    def with_steerer(self, name: str | None) -> SteeredVLLMLM:
        """This model under the installed steerer `name` (None: unsteered); same engine."""
        if name is not None and name not in self.engine.salts:
            installed = sorted(self.engine.salts)
            raise ValueError(f"no steerer {name!r} installed; installed: {installed}")
        other = copy.copy(self)
        other.steerer = name
        return other

    # ----- lm-eval's entry points -------------------------------------------------------
    @staticmethod
    def modify_gen_kwargs(
        gen_kwargs: dict[str, Any], eos: Any = None, default_max_gen_toks: int = 256
    ) -> tuple[dict[str, Any], list[str], int]:
        """lm-eval's, greedy unless sampling is asked for: its HF model decodes greedily
        when a task sets neither do_sample nor temperature, its vLLM model would sample at
        vLLM's default temperature 1 (the HF backend's generations are the reference)."""
        kwargs, until, max_gen_toks = VLLM.modify_gen_kwargs(gen_kwargs, eos, default_max_gen_toks)
        if not gen_kwargs.get("do_sample") and "temperature" not in kwargs:
            kwargs["temperature"] = 0.0
        return kwargs, until, max_gen_toks

    def _model_generate(
        self,
        requests: list[list[int]],
        generate: bool = False,
        sampling_params: Any = None,
    ) -> list[Any]:
        if not generate or sampling_params is None:
            raise RuntimeError("sadi-vllm scores through _loglikelihood_tokens only")
        return self.engine.generate(
            [Request(list(r), self.steerer) for r in requests], sampling_params
        )

    def _loglikelihood_tokens(  # type: ignore[override]
        self, requests: list[Any], disable_tqdm: bool = False
    ) -> list[tuple[float, bool]]:
        """Each (context, continuation) as one row whose first `ctxlen` tokens are the
        context (the steered cells' prompt); the last `max_length - 1` tokens are kept."""
        from vllm import SamplingParams

        keep = self.max_length - 1  # vLLM generates at least one token
        rows: list[Request] = []
        for _, context, continuation in requests:
            tokens = (context + continuation)[-keep:]
            if len(tokens) - len(continuation) < 1:
                raise ValueError(
                    f"a continuation of {len(continuation)} tokens leaves no context within "
                    f"max_model_len={self.max_length}; raise model.vllm.max_model_len"
                )
            rows.append(Request(tokens, self.steerer, len(tokens) - len(continuation)))
        params = SamplingParams(temperature=0, prompt_logprobs=1, max_tokens=1, detokenize=False)
        size = int(self.batch_size) if self.batch_size != "auto" else 64
        results: list[tuple[float, bool]] = []
        bar = tqdm(
            total=len(rows), disable=disable_tqdm or not self.progress, desc="sadi-vllm scoring"
        )
        for start in range(0, len(rows), size):
            chunk = rows[start : start + size]
            for row, out, req in zip(
                chunk, self.engine.generate(chunk, params), requests[start : start + size]
            ):
                answer = self._parse_logprobs(row.tokens, out, row.prompt_length)
                results.append(answer)
                if req[0] is not None:
                    self.cache_hook.add_partial("loglikelihood", req[0], answer)
                bar.update(1)
        bar.close()
        return results


__all__ = ["SteeredVLLMLM", "check_lm_eval_vllm"]
