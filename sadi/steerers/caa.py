"""CAA: Contrastive Activation Addition (Rimsky et al. 2023, arXiv 2312.06681).

Fit: read the residual stream (decoder layer output) of every layer at one token of
prompt+positive and prompt+negative; the steering vector of layer l is
v_l = mean over pairs of (a_l(pos) - a_l(neg)). Vectors of all layers are kept, so one fit
serves a sweep over `layer`.

Apply: add `multiplier * v_layer` to the output of decoder layer `layer` at every position
from the last prompt token on ("response": the position whose output predicts the first
answer token and every answer token after it, the authors' "all positions after the
instruction") or at every real position ("all", what lm-eval's built-in `steered` model
does). Scoring and generation edit the same cells: a scored row (prompt + continuation)
is edited from its last prompt token on; `generate` edits the prefill's last token (or
the whole prefill under "all") and every token decoded with the KV cache, so the
log-likelihood of a continuation equals the one teacher-forced generation assigns.

Direction (`direction`): "mean_diff" (CAA); two controls, ablations the way SADI's are:
"pca", the first principal component of the pair differences (RepE / repeng's PCA of
differences), and "random", a seeded Gaussian direction; both norm-matched to the mean
difference of their layer and signed along it, so a multiplier means the same vector size.
The fit also records, per layer, the consistency of the pair differences (Braun et al.
2025): the mean cosine of each pair's difference to their mean (`consistency`).

Read position: `read_offset` counts back from the last token of prompt + completion, so 0
reads the last token and -1 the one before it. The authors read token -2 because their
completions end in the answer letter followed by ")" (e.g. "(A)"): that is read_offset=-1.
steering-vectors' `read_token_index` is `read_offset - 1`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn
from transformers.tokenization_utils_base import PreTrainedTokenizerBase
from typing_extensions import Self

from sadi.core.activations import read_pair_activations
from sadi.core.architectures import decoder_layers, model_shape
from sadi.core.positions import (
    ANSWER_POSITIONS,
    AnswerPositions,
    PositionPolicy,
    answer_positions,
)
from sadi.core.positions import read_offset as check_read_offset
from sadi.data.pairs import Pair
from sadi.infra import checks
from sadi.steerers.artifacts import check_finite_tensor, check_tensor_shape
from sadi.steerers.base import EditFn, Steerer, check_pairs
from sadi.steerers.spec import MethodSpec

CaaPositions = AnswerPositions
CAA_POSITIONS: tuple[str, ...] = ANSWER_POSITIONS
CaaDirection = Literal["mean_diff", "pca", "random"]
CAA_DIRECTIONS: tuple[str, ...] = get_args(CaaDirection)


@dataclass
class CAAState:
    """Fitted CAA state.

    vectors: [layers, d_model] float32, mean difference (pos - neg) of the decoder layer
        outputs at the read position, unnormalised, one row per layer (or the control
        direction of `direction`, norm-matched to it).
    """

    vectors: Tensor


class CAA(Steerer[CAAState]):
    """Contrastive activation addition on the residual stream of one layer.

    Args:
        component: must be "residual" (the decoder layer output); kept for the common
            constructor signature of steerers.
        layer: decoder layer whose output is steered (0-based; the authors' headline setting
            is 13 of 32 on Llama-2-7B-chat).
        multiplier: m in `output + m * v_layer`; 0 leaves the model bit-identical, negative
            values steer away from the positive completions.
        read_offset: read position relative to the last token of prompt + completion
            (0 = last token, -1 = the token before it, the authors' answer letter before ")").
        normalize: rescale every layer's vector to the mean norm over layers of the
            unnormalised vectors (see `steering_vectors`). Applied at steering time; the
            saved state is always the raw mean difference.
        positions: "response" (the last prompt token and every continuation / generated
            token, the paper's setting) or "all" (every real position, prompt included, as
            lm-eval's `steered` model). "continuation", the old name, is read as "response".
        direction: "mean_diff" (CAA), or the controls "pca" (first principal component of
            the pair differences) and "random" (seeded), norm-matched to the mean difference.
        seed: seeds the "random" direction.
        batch_size: batch size of the fitting passes.
        progress: show a progress bar while fitting.

    Only `read_offset`, `direction` and `seed` change what `fit` computes; `layer`,
    `multiplier`, `normalize` and `positions` act at steering time, so `with_params` derives
    variants of one fit.

    Example:
        >>> caa = CAA(layer=13, multiplier=1.5).fit(model, tokenizer, pairs)
        >>> with caa.apply(model):
        ...     out = model.generate(**tokenizer(prompts, return_tensors="pt"))
        >>> with caa.with_params(layer=10, multiplier=-1.0).apply(model):
        ...     ...
    """

    spec = MethodSpec(
        name="caa",
        strength="multiplier",
        identity=0.0,
        axes=("layer", "multiplier"),
        # only read_offset changes what fit() computes: every layer has its vector
        apply_params=("layer", "multiplier", "normalize", "positions"),
        components=("residual",),
        default_component="residual",
    )
    edit_policy: PositionPolicy = "response"
    edit_generated = True

    def __init__(
        self,
        component: str = "residual",
        layer: int = 13,
        multiplier: float = 1.0,
        read_offset: int = 0,
        normalize: bool = False,
        positions: CaaPositions = "response",
        direction: CaaDirection = "mean_diff",
        seed: int = 0,
        batch_size: int = 16,
        progress: bool = True,
    ) -> None:
        super().__init__(component, batch_size, progress)
        self.direction: CaaDirection = checks.choice("direction", direction, CAA_DIRECTIONS)
        self.seed = checks.integer("seed", seed, minimum=0, example="intervention.seed=0")
        # per layer, mean cosine of the pair differences to their mean (the last fit's)
        self.consistency: list[float] = []
        self.layer = checks.integer("layer", layer, minimum=0, example="intervention.layer=13")
        self.multiplier = checks.finite("multiplier", multiplier)
        self.read_offset = check_read_offset(read_offset)
        if not isinstance(normalize, bool):
            raise ValueError(f"normalize must be true or false, got {normalize!r}")
        self.normalize = normalize
        self.positions: CaaPositions = answer_positions(positions)
        self.edit_policy = self.positions

    def _share_fit(self, source: CAA) -> None:
        self.consistency = list(source.consistency)
        if self.shape is not None:
            self._check_layer(self.shape.n_layers)

    def _check_layer(self, n_layers: int) -> None:
        checks.layer_in_range(self.layer, n_layers)

    # ----- fit -----------------------------------------------------------------------
    def fit(
        self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, pairs: Sequence[Pair]
    ) -> Self:
        """Mean (pos - neg) residual stream at the read position, for every layer.

        Deterministic: a function of the model, the pairs and `read_offset` only.
        """
        check_pairs(pairs)
        self._check_layer(model_shape(model).n_layers)
        shape = self._remember_model(model, len(pairs))
        pos, neg = read_pair_activations(
            model,
            tokenizer,
            pairs,
            "residual",
            shape,
            offset=self.read_offset,
            batch_size=self.batch_size,
            progress=self.progress,
            desc="CAA fit (residual)",
        )  # [pairs, layers, d_model] each
        diffs = pos - neg  # [pairs, layers, d_model]
        mean = diffs.mean(dim=0)  # [layers, d_model]
        self.consistency = pair_consistency(diffs, mean).tolist()
        self.state = CAAState(vectors=control_direction(diffs, mean, self.direction, self.seed))
        return self

    def extra_metadata(self) -> dict[str, Any]:
        return {"consistency": self.consistency}

    def _read_extra_metadata(self, meta: dict[str, Any]) -> None:
        self.consistency = [float(v) for v in meta.get("consistency") or []]

    # ----- apply ---------------------------------------------------------------------
    def steering_vectors(self) -> Tensor:
        """[layers, d_model] float32: the vectors as applied (normalised when `normalize`).

        The authors rescale each layer's vectors so that different behaviours have equal
        norm at that layer. With one behaviour that is the identity, so `normalize` instead
        equalises across layers: every layer's vector gets the mean norm over layers of the
        raw vectors (directions kept; a zero vector stays zero). A multiplier then means the
        same vector size at every layer of a layer sweep, and the overall scale stays that
        of this model's own differences.
        """
        raw = self.fitted_state().vectors.float()  # [layers, d_model]
        if not self.normalize:
            return raw
        norms = raw.norm(dim=1)  # [layers]
        scale = torch.where(norms > 0, norms.mean() / norms, torch.zeros_like(norms))
        return raw * scale[:, None]

    def vector(self) -> Tensor:
        """[d_model] float32: the vector added (times `multiplier`) at `layer`."""
        vectors = self.steering_vectors()
        self._check_layer(int(vectors.shape[0]))
        return vectors[self.layer]

    def selected_layers(self) -> list[int]:
        return [self.layer]

    def residual_additions(self) -> dict[int, Tensor]:
        return {} if self.multiplier == 0.0 else {self.layer: self.multiplier * self.vector()}

    def _edit_fns(self, model: nn.Module) -> dict[int, EditFn]:
        self._check_layer(len(decoder_layers(model)))
        if self.multiplier == 0.0:  # the identity: register nothing
            return {}
        delta = self.multiplier * self.vector()  # [d_model]

        def edit(layer: int, act: Tensor, rows: Tensor, pos: Tensor) -> Tensor:
            d = delta.to(device=act.device, dtype=act.dtype)
            return act.index_put((rows, pos), act[rows, pos] + d)

        return {self.layer: edit}

    # ----- artifacts -----------------------------------------------------------------
    def _check_state(self, state: CAAState) -> CAAState:
        """The loaded state, checked against the recorded model (if any) and `layer`."""
        vectors = check_finite_tensor("vectors", state.vectors)
        if self.shape is not None:
            expected = (self.shape.n_layers, self.shape.d_model)
            check_tensor_shape(
                "vectors", vectors, expected, "[n_layers, d_model] of the recorded fingerprint"
            )
        elif vectors.dim() != 2:
            raise ValueError(f"CAA vectors must be [layers, d_model], got {tuple(vectors.shape)}")
        self._check_layer(int(vectors.shape[0]))
        return CAAState(vectors=vectors)


def pair_consistency(diffs: Tensor, mean: Tensor) -> Tensor:
    """[layers]: the mean over pairs of cos(diff_i, mean diff), per layer (1: every pair's
    difference points the same way; near 0: the mean is a small residue of noise)."""
    cos = nn.functional.cosine_similarity(diffs.float(), mean.float()[None], dim=-1)
    return cos.mean(dim=0)


def control_direction(diffs: Tensor, mean: Tensor, direction: str, seed: int) -> Tensor:
    """[layers, d_model]: the mean difference, or a control norm-matched to it per layer
    and signed along it ("pca": the first principal component of the centred differences;
    "random": a seeded Gaussian direction)."""
    if direction == "mean_diff":
        return mean
    if direction == "pca":
        centred = (diffs - mean[None]).float().transpose(0, 1)  # [layers, pairs, d_model]
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        unit = vh[:, 0]  # [layers, d_model]
    else:
        generator = torch.Generator().manual_seed(seed)
        unit = torch.randn(mean.shape, generator=generator)
        unit = unit / unit.norm(dim=-1, keepdim=True)
    sign = torch.where((unit * mean).sum(-1) < 0, -1.0, 1.0)
    return unit * (sign * mean.float().norm(dim=-1))[:, None]


__all__ = [
    "CAA",
    "CAAState",
    "CAA_DIRECTIONS",
    "CAA_POSITIONS",
    "CaaDirection",
    "CaaPositions",
    "control_direction",
    "pair_consistency",
]
