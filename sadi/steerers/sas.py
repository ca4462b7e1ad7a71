"""SAS: Sparse Activation Steering (Bayat et al., arXiv 2503.00177).

Steers in the latent space of a sparse autoencoder (SAE, `sadi.sae`) of one layer's
residual stream (the output of decoder layer L). No authors' code exists; this follows the
paper's algorithm as two independent re-implementations restate it, and every choice the
paper leaves open is named here.

Fit: read the residual stream of layer L at the read position of prompt + positive and
prompt + negative (`read_offset` counts back from the last token, as CAA's: 0 reads the
answer token) and encode: codes S+ [N, d_sae], S- [N, d_sae]. Per side and latent c:
freq[c] = fraction of the N examples where c is non-zero, and mean[c] = the mean of c over
the examples where it is non-zero (0 when it never is). These four [d_sae] vectors are the
fitted state, so one fit serves every tau, lambda and mode.

Steering vector for a threshold tau: v+[c] = mean+[c] if freq+[c] >= tau else 0, v- likewise;
latents non-zero in both v+ and v- are dropped from both; s = v+ - v- (positive entries:
latents seen only with the behaviour, negative: only without it).

Apply at layer L, at the positions of `positions` ("response": the last prompt token, whose
output predicts the first answer token, every continuation token and every generated token,
as CAA; "all": every real token):

- mode "code": a' = g(ReLU(f(a) + lambda * s)) + (a - g(f(a))): edit the code, decode, keep
  the SAE's error term. Computed as a + (ReLU(f(a) + lambda * s) - f(a)) @ W_dec (b_dec
  cancels), which equals the formula and keeps a exactly where the code does not change.
  The activation after the edit is ReLU only, for every architecture: TopK is not
  re-applied (the steered code may hold more than k latents) and a JumpReLU threshold is
  not re-applied (a latent pushed above 0 but below its threshold stays on).
- mode "decoder": a' = a + lambda * (s @ W_dec) (decoder directions only, input-independent).

lambda = 0 registers no hook: the unsteered model, bit for bit. The SAE travels inside the
saved steerer (its tensors and cfg.json), so a steerer loads on another machine without the
SAE's directory; its fingerprint is part of the fit key (content, not path).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import Tensor, nn
from transformers.tokenization_utils_base import PreTrainedTokenizerBase
from typing_extensions import Self

from sadi.core.activations import read_pair_activations
from sadi.core.models import default_cache_dir
from sadi.core.positions import ANSWER_POSITIONS, AnswerPositions, PositionPolicy, answer_positions
from sadi.core.positions import read_offset as check_read_offset
from sadi.data.pairs import Pair
from sadi.infra import checks
from sadi.sae import analysis, bundle, source
from sadi.sae.model import FEATURES_FILE, SAEConfig, SparseAutoencoder, sae_fingerprint
from sadi.steerers.artifacts import check_finite_tensor, check_tensor_names, check_tensor_shape
from sadi.steerers.base import EditFn, Steerer, check_pairs
from sadi.steerers.spec import MethodSpec

SasMode = Literal["code", "decoder"]
SAS_MODES: tuple[str, ...] = get_args(SasMode)
# "random" (the ablation): s's non-zero values on as many latents drawn at random (seeded)
SasVariant = Literal["sas", "random"]
SAS_VARIANTS: tuple[str, ...] = get_args(SasVariant)
SAS_POSITIONS: tuple[str, ...] = ANSWER_POSITIONS
TRAINED = source.TRAINED
# rows encoded at once while fitting
_ENCODE_ROWS = 256


@dataclass
class SASState:
    """Fitted SAS statistics, [d_sae] float32 each, per side (pos / neg).

    freq_*: fraction of the examples where the latent is non-zero.
    mean_*: mean of the latent over the examples where it is non-zero (0 if never).
    """

    freq_pos: Tensor
    freq_neg: Tensor
    mean_pos: Tensor
    mean_neg: Tensor


_STATE = tuple(f.name for f in fields(SASState))


def code_statistics(codes: Tensor) -> tuple[Tensor, Tensor]:
    """(freq, mean over non-zero rows) of each latent of `codes` [N, d_sae]."""
    nonzero = codes != 0
    count = nonzero.sum(0)
    freq = count.double() / codes.shape[0]
    total = torch.where(nonzero, codes.double(), 0.0).sum(0)
    mean = torch.where(count > 0, total / count.clamp(min=1), 0.0)
    return freq.float(), mean.float()


def steering_vector(state: SASState, tau: float) -> Tensor:
    """s = v+ - v- for threshold `tau` (see the module docstring), [d_sae] float32."""
    v_pos = torch.where(state.freq_pos >= tau, state.mean_pos, 0.0)
    v_neg = torch.where(state.freq_neg >= tau, state.mean_neg, 0.0)
    shared = (v_pos != 0) & (v_neg != 0)
    return torch.where(shared, 0.0, v_pos) - torch.where(shared, 0.0, v_neg)


def random_features(s: Tensor, seed: int) -> Tensor:
    """The ablation's vector: the non-zero values of `s` (in latent order) placed on as many
    distinct latents drawn uniformly at random (seeded); zero elsewhere."""
    values = s[s != 0]
    g = torch.Generator().manual_seed(seed)
    latents = torch.randperm(len(s), generator=g)[: len(values)]
    return torch.zeros_like(s).index_put((latents,), values)


class SAS(Steerer[SASState]):
    """Sparse activation steering with an SAE of decoder layer `layer`'s output.

    Args:
        component: must be "residual" (the SAE's input is the residual stream).
        sae: the SAE: a directory in SAELens' format (cfg.json + sae_weights.safetensors),
            a loaded `sadi.sae.SparseAutoencoder`, or "trained": the TopK SAE that
            `python -m sadi.sae train` makes for this model and layer with its defaults
            (trained offline at the first fit, then taken from the cache). Required to fit.
        layer: the decoder layer whose output the SAE reads and SAS steers; None takes it
            from the SAE's hook name (with sae="trained": the middle layer, n_layers // 2).
            A layer that disagrees with the SAE's is an error.
        sae_train: with sae="trained", overrides of `sadi.sae.train.TrainConfig` fields
            (e.g. {"tokens": 100_000}); they enter the SAE's cache key and the fit key.
        tau: frequency threshold in [0, 1]: a latent enters v+ (v-) when it is non-zero on
            at least this fraction of the positives (negatives).
        lam: lambda, the steering strength; 0 is the unsteered model.
        mode: "code" (edit the code, decode, keep the error term) or "decoder"
            (add lambda * s @ W_dec).
        variant: "sas", or "random" (the ablation: s's values on as many random latents).
        seed: seeds the random variant's latents.
        read_offset: read position relative to the last token of prompt + completion (<= 0).
        positions: "response" (from the last prompt token on, and every generated token) or
            "all" (every real token).
        batch_size: batch size of the fitting passes.
        progress: show a progress bar while fitting.

    Only `read_offset` (and the SAE) change what `fit` computes; `tau`, `lam`, `mode` and
    `positions` act at steering time (`with_params`).

    Example:
        >>> sas = SAS(sae="saes/smollm2_l15", tau=0.1, lam=4.0).fit(model, tokenizer, pairs)
        >>> with sas.apply(model):
        ...     out = model.generate(**tokenizer(prompts, return_tensors="pt"))
    """

    spec = MethodSpec(
        name="sas",
        strength="lam",
        identity=0.0,
        axes=("tau", "lam"),
        # only read_offset (and the SAE) change what fit() computes
        apply_params=("tau", "lam", "mode", "positions", "variant", "seed"),
        components=("residual",),
        default_component="residual",
    )
    # the `sae` argument is kept as its source (a path or "trained"); the loaded SAE is
    # `sae_module`, and `sae()` returns it
    param_attributes: ClassVar[dict[str, str]] = {"sae": "sae_source"}
    edit_policy: PositionPolicy = "response"
    edit_generated = True

    def __init__(
        self,
        component: str = "residual",
        *,
        sae: str | Path | SparseAutoencoder | None,
        layer: int | None = None,
        sae_train: dict[str, Any] | None = None,
        tau: float = 0.1,
        lam: float = 1.0,
        mode: SasMode = "code",
        variant: SasVariant = "sas",
        seed: int = 0,
        read_offset: int = 0,
        positions: AnswerPositions = "response",
        batch_size: int = 16,
        progress: bool = True,
    ) -> None:
        super().__init__(component, batch_size, progress)
        if layer is not None:
            layer = checks.integer("layer", layer, minimum=0, example="null (the SAE's layer)")
        self.sae_source: str | None = (
            None if sae is None or isinstance(sae, SparseAutoencoder) else str(sae)
        )
        self.sae_module: SparseAutoencoder | None = (
            sae if isinstance(sae, SparseAutoencoder) else None
        )
        self.layer = layer
        self.sae_train = source.check_overrides(dict(sae_train or {}), self.sae_source)
        self.tau = checks.finite("tau", tau)
        if not 0.0 <= self.tau <= 1.0:
            raise ValueError(
                f"tau={tau} is a frequency threshold: choose 0 <= tau <= 1 (e.g. 0.1: a latent "
                "counts for a side when it fires on at least 10% of that side's examples)"
            )
        self.lam = checks.finite("lam", lam)
        self.mode: SasMode = checks.choice("mode", mode, SAS_MODES)
        self.variant: SasVariant = checks.choice("variant", variant, SAS_VARIANTS)
        self.seed = checks.integer("seed", seed)
        self.read_offset = check_read_offset(read_offset)
        self.positions: AnswerPositions = answer_positions(positions)
        self.edit_policy = self.positions
        self._sae_cfg: SAEConfig | None = None  # read from steerer.json before the tensors
        self._sae_expected: str | None = None
        self._examples: dict[str, list[dict[str, Any]]] | None = None
        self._sae_dir: Path | None = (
            Path(self.sae_source) if self.sae_source not in (None, TRAINED) else None
        )
        self._cache_dir: Path | None = None
        self._training_key: dict[str, Any] | None = None  # sae="trained": set by fit_key
        self._data_dir: str | Path | None = None

    def check_files(self) -> None:
        """The SAE directory is one (checked before the model loads)."""
        if self._sae_dir is not None:
            source.check_directory(self._sae_dir)

    # ----- the SAE ---------------------------------------------------------------------
    def use_paths(self, cache_dir: str | Path, data_dir: str | Path | None) -> None:
        self._cache_dir, self._data_dir = Path(cache_dir), data_dir

    def sae(self) -> SparseAutoencoder:
        """The SAE, loaded from `sae` on first use (sae="trained": made by `fit`)."""
        if self.sae_module is None:
            self.sae_module = source.load(self.sae_source)
        return self.sae_module

    def _share_fit(self, source: Self) -> None:
        # adopt: a loaded cache entry knows no SAE directory, this steerer may (its examples)
        self.sae_module = source.sae_module or self.sae_module
        self._sae_dir = source._sae_dir or self._sae_dir
        self._cache_dir = source._cache_dir or self._cache_dir
        self._data_dir = source._data_dir or self._data_dir
        self._training_key = source._training_key or self._training_key
        self._examples = source._examples  # read once per fit, not once per sweep point

    # ----- fit -----------------------------------------------------------------------
    def fit(
        self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, pairs: Sequence[Pair]
    ) -> Self:
        """Encode the read position of every positive and negative; keep per-latent
        frequencies and non-zero means (deterministic given model, SAE, pairs, offset)."""
        check_pairs(pairs)
        if self.sae_source == TRAINED and self.sae_module is None:
            cfg = source.train_config(model, self.layer, self.sae_train)
            cache = self._cache_dir or default_cache_dir()
            self.sae_module, self._sae_dir = source.train_default(
                model, tokenizer, cfg, cache, self._data_dir, self.progress
            )
        layer = source.resolve_layer(self.sae(), model, self.layer)
        shape = self._remember_model(model, len(pairs))
        self.layer = layer
        pos, neg = read_pair_activations(
            model,
            tokenizer,
            pairs,
            "residual",
            shape,
            offset=self.read_offset,
            batch_size=self.batch_size,
            progress=self.progress,
            desc="SAS fit (residual)",
        )
        acts = torch.cat([pos, neg])[:, layer]  # [2 * pairs, d_model]
        sae = self.sae()
        with torch.no_grad():
            codes = torch.cat(
                [sae.encode(acts[i : i + _ENCODE_ROWS]) for i in range(0, len(acts), _ENCODE_ROWS)]
            ).float()
        n = len(pairs)
        freq_pos, mean_pos = code_statistics(codes[:n])
        freq_neg, mean_neg = code_statistics(codes[n:])
        self.state = SASState(freq_pos, freq_neg, mean_pos, mean_neg)
        return self

    def fit_key(self, model: nn.Module, pairs: Sequence[Pair]) -> dict[str, Any]:
        """The base key, with the SAE by content (its fingerprint, or for sae="trained" its
        training key), not by path."""
        key = super().fit_key(model, pairs)
        key["params"] = {k: v for k, v in key["params"].items() if k != "sae"}
        if self.sae_source == TRAINED:
            cfg = source.train_config(model, self.layer, self.sae_train)
            key["sae_training"] = source.training_key(model, cfg, self._data_dir)
            self._training_key = key["sae_training"]
        else:
            key["sae_fingerprint"] = sae_fingerprint(self.sae())
        return key

    # ----- apply ---------------------------------------------------------------------
    def selected_layers(self) -> list[int]:
        """[the SAE's layer] (known once fitted or loaded)."""
        if self.layer is None:
            raise RuntimeError("SAS is not fitted: its layer comes from the SAE at fit()")
        return [self.layer]

    def vector(self) -> Tensor:
        """s, [d_sae] float32, for this steerer's tau; variant "random": the same non-zero
        values, in the same order, on as many latents drawn uniformly (seeded by `seed`)."""
        s = steering_vector(self.fitted_state(), self.tau)
        if self.variant == "random":
            return random_features(s, self.seed)
        return s

    def residual_additions(self) -> dict[int, Tensor] | None:
        if self.mode != "decoder" or self.layer is None:
            return None  # code mode re-encodes each activation: not one added vector
        if self.lam == 0.0:
            return {}
        sae = self.sae()
        return {self.layer: self.lam * (self.vector().to(sae.W_dec.dtype) @ sae.W_dec).float()}

    def _edit_fns(self, model: nn.Module) -> dict[int, EditFn]:
        layer = source.resolve_layer(self.sae(), model, self.layer)
        if self.lam == 0.0:  # the identity: register nothing
            return {}
        sae = self.sae()
        s = self.vector()
        if not bool((s != 0).any()):
            st = self.fitted_state()
            raise ValueError(
                f"tau={self.tau} leaves the steering vector s empty: no latent is non-zero on "
                f">= {self.tau:.0%} of one side's examples without also being kept on the "
                f"other (largest frequencies: positives {float(st.freq_pos.max()):.3f}, "
                f"negatives {float(st.freq_neg.max()):.3f}); lower tau, or use more pairs"
            )
        if self.mode == "decoder":
            delta = self.lam * (s.to(sae.W_dec.dtype) @ sae.W_dec)  # [d_model]

            def add(_: int, act: Tensor, rows: Tensor, pos: Tensor) -> Tensor:
                d = delta.to(device=act.device, dtype=act.dtype)
                return act.index_put((rows, pos), act[rows, pos] + d)

            return {layer: add}
        push = (self.lam * s).to(sae.W_enc.dtype)

        def edit(_: int, act: Tensor, rows: Tensor, pos: Tensor) -> Tensor:
            a = act[rows, pos]  # [cells, d_model]
            z = sae.encode(a)
            steered = torch.relu(z + push.to(z.device))
            new = a + ((steered - z) @ sae.W_dec).to(act.dtype)
            return act.index_put((rows, pos), new)

        return {layer: edit}

    # ----- interpretability (`sadi.sae.analysis`) --------------------------------------
    def feature_examples(self) -> dict[str, list[dict[str, Any]]] | None:
        """Each latent's top-activating training tokens, from the SAE directory's
        `features.json` (None when there is none)."""
        if self._examples is None:
            self._examples = analysis.feature_examples(self._sae_dir)
        return self._examples

    def top_features(self, n: int = 20, examples: int = 5) -> list[dict[str, Any]]:
        """The `n` latents with the largest |s|, with per-side statistics and examples."""
        st = self.fitted_state()
        stats = {name: getattr(st, name) for name in _STATE}
        return analysis.top_features(self.vector(), stats, self.feature_examples(), n, examples)

    def write_extras(self, directory: Path) -> None:
        """`features.json`: the top features of s (`top_features`) at this tau."""
        if self.state is None:
            return
        known = self._sae_dir if self.feature_examples() is not None else None
        body = analysis.features_file(self.vector(), self.tau, self.top_features(), known)
        (directory / FEATURES_FILE).write_text(json.dumps(body, indent=2) + "\n")

    # ----- artifacts -----------------------------------------------------------------
    def extra_metadata(self) -> dict[str, Any]:
        return bundle.metadata(self.sae())

    def _read_extra_metadata(self, meta: dict[str, Any]) -> None:
        self._sae_cfg, self._sae_expected = bundle.read_metadata(meta)

    def adopt(self, fitted: Steerer[Any]) -> Self:
        if isinstance(fitted, SAS):
            self.sae_module = fitted.sae()
            trained = self._training_key
            if self.sae_source == TRAINED and trained is not None and self._sae_dir is None:
                # the trained SAE's cache entry, for its feature examples
                cache = self._cache_dir or default_cache_dir()
                self._sae_dir = source.cached_entry(cache, trained)
        return super().adopt(fitted)

    def tensors(self) -> dict[str, Tensor]:
        """The statistics, and the SAE's tensors (it travels inside the artifact)."""
        return {**super().tensors(), **bundle.pack(self.sae())}

    def _load_tensors(self, tensors: dict[str, Tensor]) -> None:
        """The SAE from its prefixed tensors (checked against its recorded fingerprint),
        then the statistics as every steerer's state."""
        cfg = self._sae_cfg or (self.sae_module.cfg if self.sae_module is not None else None)
        if cfg is None:
            raise ValueError("no SAE config to read the SAE tensors with (steerer.json 'sae_cfg')")
        check_tensor_names(self.method, tensors, [*_STATE, *bundle.tensor_names(cfg)])
        self.sae_module = bundle.unpack(tensors, cfg, self._sae_expected)
        super()._load_tensors({n: t for n, t in tensors.items() if n in _STATE})

    def _check_state(self, state: SASState) -> SASState:
        """Finite [d_sae] statistics of an SAE that reads this model's residual stream."""
        cfg = self.sae().cfg
        stats = {name: check_finite_tensor(name, getattr(state, name)) for name in _STATE}
        for name, t in stats.items():
            check_tensor_shape(name, t, (cfg.d_sae,), "[d_sae] of the SAE")
        if self.shape is not None and cfg.d_in != self.shape.d_model:
            raise ValueError(
                f"the SAE has d_in={cfg.d_in} but the recorded model has d_model="
                f"{self.shape.d_model}"
            )
        return SASState(**stats)


__all__ = [
    "SAS",
    "SASState",
    "SAS_MODES",
    "SAS_POSITIONS",
    "SAS_VARIANTS",
    "TRAINED",
    "code_statistics",
    "random_features",
    "steering_vector",
]
