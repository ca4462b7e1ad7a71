"""A vLLM engine that steers: start-up checks, steerers installed by name, per-request
steering (extra_args and a prefix-cache salt per steering), scoring by prompt log-probs,
generation, and the start-up self-test that compares steered log-probs with the HF backend.

Example:
    >>> engine = SteeredVLLM(model_path("embedded:smollm2-135m-instruct"), fingerprint=fp)
    >>> engine.install("caa", caa)
    >>> engine.self_test("caa", caa, hf_model, tokenizer)  # raises on a mismatch
    >>> outs = engine.generate([Request(ids, steerer="caa")], SamplingParams(max_tokens=32))
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sadi.core.models import input_device
from sadi.core.positions import BatchLayout
from sadi.eval.metrics import overflowed
from sadi.infra.errors import UserError
from sadi.steerers.base import Steerer
from sadi.vllm.sites import TESTED_VLLM_VERSIONS, refusal
from sadi.vllm.worker import PROMPT_LENGTH_KEY, STEERER_KEY

log = logging.getLogger(__name__)

EXTENSION = "sadi.vllm.worker.SteeringExtension"
# the self-test's text: its first half is the prompt, the rest the scored continuation
PROBE = (
    "Question: Which is heavier, a kilogram of feathers or a kilogram of iron? "
    "Answer: They weigh the same, one kilogram each, because a kilogram is a kilogram."
)


class VLLMError(UserError):
    """vLLM is missing, untested, misconfigured, or disagrees with the HF backend."""


@dataclass(frozen=True)
class VLLMSettings:
    """How the engine runs (`model.vllm.*` in a run's config).

    Attributes:
        max_model_len: the longest sequence (prompt + generated tokens).
        kv_cache_mb: memory for the KV cache (vLLM otherwise takes 92% of the device's).
        tolerance: the largest |log-prob difference| to the HF backend the self-test accepts
            in float32 (in float16/bfloat16 see `SteeredVLLM.self_test`).
        allow_untested: run on a vLLM version sadi was not tested on (the self-test still
            runs and still refuses a mismatch).
        tensor_parallel_size: GPUs one model is split over.
        max_num_seqs: requests vLLM batches together.
    """

    max_model_len: int = 2048
    kv_cache_mb: int = 1024
    tolerance: float = 1e-3
    allow_untested: bool = False
    tensor_parallel_size: int = 1
    max_num_seqs: int = 64


@dataclass(frozen=True)
class Request:
    """One prompt for the engine: its tokens, the installed steerer it runs under (None:
    unsteered) and, for a scored row, the length of its context (the rest is scored)."""

    tokens: list[int]
    steerer: str | None = None
    prompt_length: int | None = None


def vllm_version() -> str:
    """The importable vLLM's version; raises VLLMError saying how to get one."""
    try:
        import vllm
    except ImportError as err:
        raise VLLMError(
            "model.backend=vllm needs vLLM, which is not installed in this Python "
            f"({err}); run `make setup-vllm` and use .venv-vllm/bin/python (its own "
            "environment: vLLM pins its own transformers)"
        ) from err
    return str(vllm.__version__)


def check_version(allow_untested: bool) -> str:
    """The vLLM version, refused when untested unless `allow_untested`."""
    version = vllm_version()
    if version not in TESTED_VLLM_VERSIONS:
        if not allow_untested:
            raise VLLMError(
                f"vLLM {version} is not a version sadi's vLLM backend was tested on "
                f"({', '.join(TESTED_VLLM_VERSIONS)}): it reaches vLLM internals that change "
                "between releases. Install a tested one (make setup-vllm), or set "
                "model.vllm.allow_untested=true to rely on the start-up self-test alone"
            )
        log.warning("vLLM %s is untested; relying on the start-up self-test", version)
    return version


def prepare_environment(settings: VLLMSettings) -> None:
    """One process when one device serves the model: the worker runs in this process
    (faster start, and a script needs no `__main__` guard)."""
    if settings.tensor_parallel_size == 1:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def engine_args(settings: VLLMSettings, dtype: str) -> dict[str, Any]:
    """`LLM(**...)` arguments besides the model: eager mode (hooks run only there), sadi's
    worker extension, prefix caching (salted per steering), bounded KV-cache memory."""
    return {
        "dtype": dtype,
        "seed": 0,
        "enforce_eager": True,
        "enable_prefix_caching": True,
        "max_model_len": settings.max_model_len,
        "max_num_seqs": settings.max_num_seqs,
        "kv_cache_memory_bytes": settings.kv_cache_mb << 20,
        "tensor_parallel_size": settings.tensor_parallel_size,
        "worker_extension_cls": EXTENSION,
    }


def check_engine(config: Any) -> None:
    """Refuse an engine the steering hooks would not run right in: compiled graphs (hooks
    run in eager mode only), another worker extension, speculative decoding (its draft
    model proposes tokens unsteered)."""
    if getattr(config.parallel_config, "worker_extension_cls", "") != EXTENSION:
        raise VLLMError(f"the vLLM engine was not started with worker_extension_cls={EXTENSION}")
    if not getattr(config.model_config, "enforce_eager", False):
        raise VLLMError(
            "the vLLM engine compiles graphs (enforce_eager=False): hooks would not run"
        )
    if getattr(config, "speculative_config", None) is not None:
        raise VLLMError(
            "speculative decoding is on: its draft model would propose tokens unsteered; "
            "turn it off for a steered model"
        )


def steering_digest(directory: Path) -> str:
    """A digest of everything a saved steerer computes from (its json and tensors)."""
    h = hashlib.sha256()
    for name in ("steerer.json", "steerer.safetensors"):
        h.update((directory / name).read_bytes())
    return h.hexdigest()[:16]


# In float16/bfloat16 the two backends' kernels round differently: the unsteered SmolLM2's
# probe log-probs differ by up to 0.22 in bf16 and 0.017 in fp16, and a steered model's by up
# to 2.8 x its unsteered difference (fp16, SADI on hidden units; tests/vllm_backend/
# test_vllm_half.py). The unsteered self-test accepts up to HALF_EPS of the dtype's eps, a
# steered one STEERED_OVER_UNSTEERED x the unsteered difference.
HALF_EPS = 128
STEERED_OVER_UNSTEERED = 4.0


def unsteered_tolerance(tolerance: float, dtype: str) -> float:
    """The unsteered self-test's bound: `tolerance` in float32, at least `HALF_EPS` x the
    dtype's eps in float16 (0.125) and bfloat16 (1.0)."""
    if dtype in ("float16", "bfloat16"):
        return max(tolerance, HALF_EPS * torch.finfo(getattr(torch, dtype)).eps)
    return tolerance


class SteeredVLLM:
    """vLLM's `LLM` with sadi's worker extension; steerers are installed by name.

    Args:
        path: the model directory (or hub id) vLLM loads: the same files as the HF model.
        fingerprint: `weights_fingerprint` of the HF model read from those files; steerers
            are checked against it inside the workers.
        dtype: "float32", "bfloat16" or "float16".
        settings: see `VLLMSettings`.
        llm: an `LLM` built with `engine_args` by a caller that ran `check_version` first
            (lm-eval's VLLM builds its own); None: built here.
    """

    def __init__(
        self,
        path: str,
        fingerprint: str,
        dtype: str = "float32",
        settings: VLLMSettings | None = None,
        llm: Any = None,
    ) -> None:
        self.settings = settings or VLLMSettings()
        # a caller handing in its own LLM checked the version before building it
        self.version = (
            vllm_version() if llm is not None else check_version(self.settings.allow_untested)
        )
        self.path, self.fingerprint, self.dtype = path, fingerprint, dtype
        if llm is None:
            prepare_environment(self.settings)
            from vllm import LLM

            llm = LLM(model=path, tokenizer=path, **engine_args(self.settings, dtype))
        self.llm = llm
        check_engine(llm.llm_engine.vllm_config)
        self.salts: dict[str, str] = {}
        self.unsteered_diff: float | None = None  # the unsteered self-test's difference

    # ----- steerers -----------------------------------------------------------------
    def install(self, name: str | None, steerer: Steerer[Any]) -> str:
        """Install `steerer` in every worker under `name` (replacing one of that name; None:
        named by its method and digest, installed once); returns the name."""
        why = refusal(steerer)
        if why is not None:
            raise VLLMError(f"model.backend=vllm cannot run this steerer: {why}")
        with tempfile.TemporaryDirectory(prefix="sadi-vllm-") as tmp:
            directory = steerer.save(Path(tmp) / "steerer")
            salt = steering_digest(directory)
            if name is None:
                name = f"{steerer.method}-{salt[:12]}"
                if name in self.salts:
                    return name
            self.llm.collective_rpc("sadi_install", args=(name, str(directory), self.fingerprint))
            self.salts[name] = salt
        return name

    # ----- requests -----------------------------------------------------------------
    def prompt(self, request: Request, params: Any) -> tuple[dict[str, Any], Any]:
        """vLLM's (prompt, sampling params) for `request`: steered requests carry their
        steerer and context length in extra_args, and a cache salt per steering and context
        length, so no KV block computed under one steering serves another."""
        prompt: dict[str, Any] = {"prompt_token_ids": list(request.tokens)}
        if request.steerer is None:
            return prompt, params
        if request.steerer not in self.salts:
            raise VLLMError(
                f"no steerer named {request.steerer!r} is installed; installed: "
                f"{sorted(self.salts)}"
            )
        extra: dict[str, Any] = {STEERER_KEY: request.steerer}
        if request.prompt_length is not None:
            extra[PROMPT_LENGTH_KEY] = int(request.prompt_length)
        params = params.clone()
        params.extra_args = {**(params.extra_args or {}), **extra}
        length = request.prompt_length or len(request.tokens)
        prompt["cache_salt"] = f"sadi:{self.salts[request.steerer]}:{length}"
        return prompt, params

    def generate(
        self, requests: Sequence[Request], params: Any | Sequence[Any], progress: bool = False
    ) -> list[Any]:
        """vLLM's outputs for `requests` (one sampling params, or one per request)."""
        each = list(params) if isinstance(params, (list, tuple)) else [params] * len(requests)
        pairs = [self.prompt(r, p) for r, p in zip(requests, each, strict=True)]
        return list(
            self.llm.generate(
                [p for p, _ in pairs], sampling_params=[s for _, s in pairs], use_tqdm=progress
            )
        )

    def token_logprobs(
        self, requests: Sequence[Request], progress: bool = False
    ) -> list[list[float]]:
        """Per request, the log-prob of each token after its context (`prompt_length`,
        default 1) given the tokens before it: vLLM's prompt log-probs."""
        from vllm import SamplingParams

        params = SamplingParams(temperature=0, prompt_logprobs=0, max_tokens=1, detokenize=False)
        out = []
        for r, o in zip(requests, self.generate(requests, params, progress), strict=True):
            start = r.prompt_length or 1
            lps = o.prompt_logprobs
            out.append([float(lps[i][r.tokens[i]].logprob) for i in range(start, len(r.tokens))])
        return out

    # ----- the start-up self-test ---------------------------------------------------
    def self_test(
        self,
        name: str | None,
        steerer: Steerer[Any] | None,
        model: nn.Module,
        tokenizer: Any,
        tolerance: float | None = None,
    ) -> float:
        """Compare the log-probs of `PROBE`'s second half under steerer `name` (None:
        unsteered) with the HF backend's `model` under `steerer`; returns the largest
        difference, raises VLLMError above the bound.

        The bound is `tolerance` (`settings.tolerance`) unsteered, in float32; in float16
        or bfloat16 at least `HALF_EPS` x the dtype's eps (`unsteered_tolerance`). Steered,
        it is `tolerance` + `STEERED_OVER_UNSTEERED` x the unsteered difference (measured
        first): steering may add no more than the backends' own rounding disagreement, so a
        missing or misplaced edit is refused in every dtype (a small error of strength may
        hide in half precision's rounding).
        """
        tol = self.settings.tolerance if tolerance is None else tolerance
        if name is None:
            bound = unsteered_tolerance(tol, self.dtype)
        else:
            if self.unsteered_diff is None:
                self.self_test(None, None, model, tokenizer, tolerance)
            assert self.unsteered_diff is not None
            bound = tol + STEERED_OVER_UNSTEERED * self.unsteered_diff
        ids = list(tokenizer(PROBE)["input_ids"])
        prompt_length = len(ids) // 2
        hf = hf_token_logprobs(model, steerer, ids, prompt_length)
        (ours,) = self.token_logprobs([Request(ids, name, prompt_length)])
        what = "unsteered" if name is None else f"steerer {name!r}"
        sides = [n for n, lp in (("vLLM", ours), ("HF", hf)) if not all(map(math.isfinite, lp))]
        if sides:
            raise VLLMError(
                f"the self-test prompt's log-probs ({what}, {self.dtype}) are NaN or infinite "
                f"on the {' and '.join(sides)} backend: {overflowed(self.dtype)}"
            )
        diff = float(torch.tensor(ours).sub(torch.tensor(hf)).abs().max())
        if not diff <= bound:
            how = (
                f"tolerance {bound:.3g}"
                if name is None
                else f"{bound:.3g} (model.vllm.tolerance + {STEERED_OVER_UNSTEERED:g} x the "
                f"unsteered difference {self.unsteered_diff:.2e})"
            )
            raise VLLMError(
                f"vLLM {self.version} and the HF backend disagree on the self-test prompt "
                f"({what}, {self.dtype}): log-probs differ by up to {diff:.2e} > {how}; the "
                "steering would not be the HF backend's. Use model.backend=hf, or report "
                "this with the vLLM version"
            )
        if name is None:
            self.unsteered_diff = diff
        log.info("vLLM self-test (%s): log-probs within %.1e of the HF backend", what, diff)
        return diff


@torch.no_grad()
def hf_token_logprobs(
    model: nn.Module, steerer: Steerer[Any] | None, ids: list[int], prompt_length: int
) -> list[float]:
    """The HF backend's log-prob of each token of `ids` after `prompt_length`, steered as a
    scored row (context = the first `prompt_length` tokens)."""
    device = input_device(model)
    x = torch.tensor([ids], device=device)
    if steerer is None:
        logits = model(input_ids=x).logits[0]
    else:
        with steerer.apply(model) as handle:
            handle.set_layout(
                BatchLayout(
                    seq_lengths=torch.tensor([len(ids)]),
                    prompt_lengths=torch.tensor([prompt_length]),
                    padded_length=len(ids),
                    padding_side="right",
                )
            )
            logits = model(input_ids=x).logits[0]
    lp = torch.log_softmax(logits.float(), dim=-1)
    return [float(lp[i - 1, ids[i]]) for i in range(prompt_length, len(ids))]


def settings_of(cfg: Any) -> VLLMSettings:
    """`VLLMSettings` from a `model.vllm` config node (or a dict)."""
    values = dict(cfg or {})
    known = set(VLLMSettings.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise VLLMError(f"unknown model.vllm settings {unknown}; known: {sorted(known)}")
    return VLLMSettings(**values)


__all__ = [
    "EXTENSION",
    "PROBE",
    "Request",
    "SteeredVLLM",
    "VLLMError",
    "VLLMSettings",
    "check_version",
    "hf_token_logprobs",
    "settings_of",
    "steering_digest",
    "vllm_version",
]
