"""One SAE as a torch module, read from and written to SAELens' directory format.

A directory holds `cfg.json` and `sae_weights.safetensors` with `W_enc` [d_in, d_sae],
`b_enc` [d_sae], `W_dec` [d_sae, d_in], `b_dec` [d_in] and, for JumpReLU, `threshold`
[d_sae]. The code of an activation x (`encode`) is

    pre = (x - b_dec if apply_b_dec_to_input else x) @ W_enc + b_enc
    standard:  z = ReLU(pre)
    jumprelu:  z = ReLU(pre) * (pre > threshold)
    topk:      z = ReLU of the k largest entries of pre, 0 elsewhere

and `decode(z) = z @ W_dec + b_dec`, as SAELens computes them. cfg.json is read in both
SAELens layouts (v6: `architecture`, `k`, `metadata.hook_name`; older: `activation_fn_str`,
`activation_fn_kwargs.k`, top-level `hook_name`); fields this module does not use are kept
and written back unchanged. Input normalisation other than "none" is refused (its constants
are not in the directory), as is anything else this module does not understand.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from sadi.infra.errors import UserError

SaeArchitecture = Literal["standard", "jumprelu", "topk"]
ARCHITECTURES: tuple[str, ...] = get_args(SaeArchitecture)
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
# written beside an SAE sadi trained: each latent's top-activating training tokens
FEATURES_FILE = "features.json"
_ALIASES = {"relu": "standard", "jump_relu": "jumprelu", "top_k": "topk"}
# hook names that say which decoder layer's output (residual stream) an SAE reads
_LAYER_PATTERNS = (
    r"^blocks\.(\d+)\.hook_resid_post$",  # TransformerLens
    r"^model\.layers\.(\d+)$",  # Hugging Face module path
    r"^layers\.(\d+)$",
)


class SAEFormatError(UserError):
    """An SAE directory or config this module cannot read; the message names the file."""


@dataclass(frozen=True)
class SAEConfig:
    """What an SAE computes and where it reads.

    Attributes:
        architecture: "standard" (ReLU), "jumprelu" or "topk".
        d_in: width of the activation it encodes (d_model for the residual stream).
        d_sae: number of latents.
        k: active latents per token (topk only).
        apply_b_dec_to_input: subtract b_dec from the input before encoding.
        layer: the decoder layer whose output it reads, from `hook_name` when it says so.
        hook_name: SAELens' hook name, e.g. "blocks.12.hook_resid_post".
        model_name: the model it was trained on, as its cfg.json names it.
        extra: every other cfg.json field, written back unchanged by `save_sae`.
    """

    architecture: SaeArchitecture
    d_in: int
    d_sae: int
    k: int | None = None
    apply_b_dec_to_input: bool = False
    layer: int | None = None
    hook_name: str | None = None
    model_name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"SAE architecture {self.architecture!r} is not supported; "
                f"use one of {list(ARCHITECTURES)}"
            )
        for name in ("d_in", "d_sae"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"SAE {name} must be a positive integer, got {value!r}")
        if self.architecture == "topk":
            if (
                isinstance(self.k, bool)
                or not isinstance(self.k, int)
                or not (1 <= self.k <= self.d_sae)
            ):
                raise ValueError(f"a topk SAE needs 1 <= k <= d_sae={self.d_sae}, got k={self.k!r}")
        if self.layer is not None and (isinstance(self.layer, bool) or self.layer < 0):
            raise ValueError(f"SAE layer must be a non-negative integer, got {self.layer!r}")

    def to_json(self) -> dict[str, Any]:
        """cfg.json in SAELens' v6 layout (plus the fields read from the original)."""
        metadata = dict(self.extra.get("metadata") or {})
        if self.hook_name is not None:
            metadata["hook_name"] = self.hook_name
        if self.model_name is not None:
            metadata["model_name"] = self.model_name
        if self.layer is not None:
            metadata["sadi_layer"] = self.layer
        out: dict[str, Any] = {
            **{k: v for k, v in self.extra.items() if k != "metadata"},
            "architecture": self.architecture,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": "none",
            "metadata": metadata,
        }
        if self.k is not None:
            out["k"] = self.k
        return out


def layer_of_hook(hook_name: str | None) -> int | None:
    """The decoder layer whose output `hook_name` reads, or None when it does not say."""
    for pattern in _LAYER_PATTERNS:
        if hook_name and (m := re.match(pattern, hook_name)):
            return int(m.group(1))
    return None


def parse_cfg(raw: dict[str, Any], where: str = CFG_FILE) -> SAEConfig:
    """An `SAEConfig` from a cfg.json dict (either SAELens layout)."""

    def fail(what: str) -> SAEFormatError:
        return SAEFormatError(f"{where}: {what}")

    if not isinstance(raw, dict):
        raise fail(f"must be a JSON object, got {type(raw).__name__}")
    metadata: dict[str, Any] = raw["metadata"] if isinstance(raw.get("metadata"), dict) else {}
    arch = raw.get("architecture") or raw.get("activation_fn_str")
    arch = _ALIASES.get(str(arch), arch)
    if arch not in ARCHITECTURES:
        raise fail(
            f"architecture {arch!r} is not supported (from 'architecture' or "
            f"'activation_fn_str'); supported: {list(ARCHITECTURES)}"
        )
    norm = raw.get("normalize_activations", "none")
    if norm not in (None, "none"):
        raise fail(
            f"normalize_activations={norm!r}: the normalisation constants are not stored in "
            "the SAE directory, so its codes cannot be reproduced; use an SAE trained "
            "without input normalisation (normalize_activations='none')"
        )
    k = raw.get("k", (raw.get("activation_fn_kwargs") or {}).get("k"))
    hook_name = raw.get("hook_name", metadata.get("hook_name"))
    layer = metadata.get("sadi_layer", raw.get("hook_layer", metadata.get("hook_layer")))
    layer = layer if layer is not None else layer_of_hook(hook_name)
    used = {
        "architecture",
        "activation_fn_str",
        "activation_fn_kwargs",
        "d_in",
        "d_sae",
        "k",
        "apply_b_dec_to_input",
        "normalize_activations",
        "hook_name",
        "model_name",
    }
    try:
        return SAEConfig(
            architecture=arch,  # type: ignore[arg-type]
            d_in=raw.get("d_in"),  # type: ignore[arg-type]
            d_sae=raw.get("d_sae"),  # type: ignore[arg-type]
            k=int(k) if isinstance(k, int | float) and float(k).is_integer() else k,
            apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", False)),
            layer=layer,
            hook_name=hook_name,
            model_name=raw.get("model_name", metadata.get("model_name")),
            extra=_extra(raw, used),
        )
    except ValueError as err:
        raise fail(str(err)) from err


def _extra(raw: dict[str, Any], used: set[str]) -> dict[str, Any]:
    """The cfg.json fields `SAEConfig` does not hold (metadata without the parsed keys)."""
    extra = {key: v for key, v in raw.items() if key not in used and key != "metadata"}
    if isinstance(raw.get("metadata"), dict):
        rest = {
            k: v
            for k, v in raw["metadata"].items()
            if k not in ("hook_name", "model_name", "sadi_layer")
        }
        if rest:
            extra["metadata"] = rest
    return extra


class SparseAutoencoder(nn.Module):
    """An SAE: `encode` (activation -> sparse code), `decode` (code -> activation).

    Example:
        >>> sae = load_sae("saes/smollm2_l15")
        >>> z = sae.encode(x)            # [..., d_sae], at most k non-zero per row (topk)
        >>> x_hat = sae.decode(z)        # [..., d_in]
    """

    def __init__(
        self,
        cfg: SAEConfig,
        W_enc: Tensor,
        b_enc: Tensor,
        W_dec: Tensor,
        b_dec: Tensor,
        threshold: Tensor | None = None,
    ) -> None:
        super().__init__()
        shapes = {
            "W_enc": (W_enc, (cfg.d_in, cfg.d_sae)),
            "b_enc": (b_enc, (cfg.d_sae,)),
            "W_dec": (W_dec, (cfg.d_sae, cfg.d_in)),
            "b_dec": (b_dec, (cfg.d_in,)),
        }
        if cfg.architecture == "jumprelu":
            if threshold is None:
                raise ValueError("a jumprelu SAE needs a 'threshold' tensor [d_sae]")
            shapes["threshold"] = (threshold, (cfg.d_sae,))
        for name, (t, want) in shapes.items():
            if tuple(t.shape) != want:
                raise ValueError(
                    f"SAE tensor {name!r} has shape {list(t.shape)}, expected {list(want)} "
                    f"(d_in={cfg.d_in}, d_sae={cfg.d_sae} in its config)"
                )
            if not t.is_floating_point() or not bool(torch.isfinite(t).all()):
                raise ValueError(f"SAE tensor {name!r} must be finite floating point")
        self.cfg = cfg
        self.W_enc = nn.Parameter(W_enc, requires_grad=False)
        self.b_enc = nn.Parameter(b_enc, requires_grad=False)
        self.W_dec = nn.Parameter(W_dec, requires_grad=False)
        self.b_dec = nn.Parameter(b_dec, requires_grad=False)
        self.threshold = (
            nn.Parameter(threshold, requires_grad=False) if threshold is not None else None
        )

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    def pre_activation(self, x: Tensor) -> Tensor:
        """(x - b_dec if apply_b_dec_to_input) @ W_enc + b_enc, in the SAE's dtype."""
        x = x.to(self.W_enc.dtype)
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activate(self, pre: Tensor) -> Tensor:
        """The architecture's activation of pre-activations [..., d_sae]."""
        if self.cfg.architecture == "standard":
            return torch.relu(pre)
        if self.cfg.architecture == "jumprelu":
            assert self.threshold is not None
            return torch.relu(pre) * (pre > self.threshold)
        assert self.cfg.k is not None
        top = pre.topk(self.cfg.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))

    def encode(self, x: Tensor) -> Tensor:
        return self.activate(self.pre_activation(x))

    def decode(self, z: Tensor) -> Tensor:
        return z.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    def tensors(self) -> dict[str, Tensor]:
        """The weights under SAELens' names."""
        out = {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec, "b_dec": self.b_dec}
        if self.threshold is not None:
            out["threshold"] = self.threshold
        return {k: v.detach() for k, v in out.items()}


def sae_fingerprint(sae: SparseAutoencoder) -> str:
    """sha256 (first 16 hex characters) of the config and every weight, as float32 bytes."""
    digest = hashlib.sha256(json.dumps(sae.cfg.to_json(), sort_keys=True).encode())
    for name, t in sorted(sae.tensors().items()):
        digest.update(name.encode())
        digest.update(t.to(device="cpu", dtype=torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def load_sae(directory: str | Path, *, dtype: torch.dtype = torch.float32) -> SparseAutoencoder:
    """Read an SAE directory (cfg.json + sae_weights.safetensors), offline.

    Raises:
        FileNotFoundError: a file is missing (the message says which, and what to pass).
        SAEFormatError: the config or the weights cannot be read or do not fit together.
    """
    d = Path(directory)
    cfg_path, weights_path = d / CFG_FILE, d / WEIGHTS_FILE
    for path in (cfg_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"no {path.name} in {d}; pass a directory in SAELens' format "
                f"({CFG_FILE} + {WEIGHTS_FILE}), e.g. one written by `python -m sadi.sae train`"
            )
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SAEFormatError(f"{cfg_path}: not valid JSON ({err})") from err
    cfg = parse_cfg(raw, str(cfg_path))
    try:
        weights = load_file(str(weights_path))
    except (SafetensorError, OSError) as err:
        raise SAEFormatError(f"{weights_path}: not a readable safetensors file ({err})") from err
    if cfg.architecture == "jumprelu" and "threshold" not in weights and "log_threshold" in weights:
        weights["threshold"] = weights.pop("log_threshold").exp()
    needed = ["W_enc", "b_enc", "W_dec", "b_dec"] + (
        ["threshold"] if cfg.architecture == "jumprelu" else []
    )
    missing = [n for n in needed if n not in weights]
    if missing:
        raise SAEFormatError(
            f"{weights_path}: missing tensors {missing} (found {sorted(weights)}); a "
            f"{cfg.architecture} SAE holds {needed}"
        )
    try:
        return SparseAutoencoder(
            cfg,
            weights["W_enc"].to(dtype),
            weights["b_enc"].to(dtype),
            weights["W_dec"].to(dtype),
            weights["b_dec"].to(dtype),
            threshold=weights["threshold"].to(dtype) if "threshold" in needed else None,
        )
    except ValueError as err:
        raise SAEFormatError(f"{weights_path}: {err}") from err


def save_sae(sae: SparseAutoencoder, directory: str | Path) -> Path:
    """Write cfg.json and sae_weights.safetensors (SAELens' v6 layout); returns the path."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.to("cpu").contiguous().clone() for k, v in sae.tensors().items()}
    save_file(tensors, str(d / WEIGHTS_FILE))
    (d / CFG_FILE).write_text(json.dumps(sae.cfg.to_json(), indent=2) + "\n")
    return d


def from_pretrained(
    release: str, sae_id: str, *, layer: int | None = None, dtype: torch.dtype = torch.float32
) -> SparseAutoencoder:
    """A published SAE through SAELens (needs `pip install sae-lens` and the hub), e.g.
    `from_pretrained("gemma-scope-2-270m-pt-res", "layer_12_width_16k_l0_medium")`.

    `layer` names the decoder layer it reads when its hook name does not say.
    """
    try:
        from sae_lens import SAE  # type: ignore[import-not-found]
    except ImportError as err:
        raise ImportError(
            "loading a published SAE needs SAELens: pip install sae-lens (a local directory "
            "in SAELens' format loads without it: sadi.sae.load_sae(path))"
        ) from err
    loaded = SAE.from_pretrained(release, sae_id, device="cpu")
    sae_obj = loaded[0] if isinstance(loaded, tuple) else loaded
    raw = sae_obj.cfg.to_dict()
    cfg = parse_cfg(raw, f"SAELens {release}/{sae_id}")
    if layer is not None:
        cfg = SAEConfig(**{**cfg.__dict__, "layer": layer})
    state = {k: v.detach().to(dtype) for k, v in sae_obj.state_dict().items()}
    return SparseAutoencoder(
        cfg,
        state["W_enc"],
        state["b_enc"],
        state["W_dec"],
        state["b_dec"],
        threshold=state.get("threshold"),
    )
