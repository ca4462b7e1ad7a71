"""LoReFT (Wu et al. 2024, arXiv 2404.03592): a trained low-rank intervention on one layer's
residual stream, written natively (pyreft is unmaintained and pins old stacks).

Apply: at decoder layer `layer`'s output, on the cells of `positions` (default the last
prompt token, whose output predicts the answer),

    h <- h + strength * R^T (W h + b - R h)

with R [rank, d_model] of orthonormal rows, W [rank, d_model] and b [rank]: at strength 1
the projection of h onto R's row space is replaced by W h + b (R h' = W h + b) and nothing
outside that space changes. Strength 0 is the unsteered model.

Fit: R (orthogonal parametrisation, orthogonal init), W and b (a linear layer's default
init) are trained with AdamW on each fit pair's positive completion after its prompt, the
loss on the completion tokens only: LoRA's objective (`sadi.steerers.training`), through the
same `apply` that scores and generates. The model's weights never change.

`rank=1` is a rank-1 LoReFT; AxBench's ReFT-r1 (a rank-1 direction trained with an added
sparsity objective, applied additively) is a different objective and is not implemented.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast

import torch
from torch import Tensor, nn
from transformers.tokenization_utils_base import PreTrainedTokenizerBase
from typing_extensions import Self

from sadi.core.architectures import decoder_layers, model_shape
from sadi.core.models import module_device
from sadi.core.positions import PositionPolicy
from sadi.data.pairs import Pair
from sadi.infra import checks
from sadi.steerers.artifacts import check_finite_tensor, check_tensor_shape
from sadi.steerers.base import EditFn, Steerer, check_pairs
from sadi.steerers.spec import MethodSpec
from sadi.steerers.training import TrainingParams, train

ReftPositions = Literal["last_prompt", "response", "all"]
REFT_POSITIONS: tuple[str, ...] = ("last_prompt", "response", "all")
# R R^T may differ from the identity by float32 rounding of the parametrisation
ORTHONORMAL_ATOL = 1e-4


@dataclass
class ReFTState:
    """Fitted LoReFT: rotation R [rank, d_model] (orthonormal rows), weight W [rank, d_model],
    bias b [rank], all float32."""

    rotation: Tensor
    weight: Tensor
    bias: Tensor


class _Trainable(nn.Module):
    """R (orthogonal parametrisation) and the learned source W h + b, while fitting."""

    def __init__(self, d_model: int, rank: int) -> None:
        super().__init__()
        rotate = nn.Linear(d_model, rank, bias=False)
        nn.init.orthogonal_(rotate.weight)
        self.rotate = nn.utils.parametrizations.orthogonal(rotate)
        self.source = nn.Linear(d_model, rank)

    def tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        return cast(Tensor, self.rotate.weight), self.source.weight, self.source.bias


class LoReFT(Steerer[ReFTState]):
    """Low-rank linear subspace ReFT at one layer's residual stream.

    Args:
        component: must be "residual" (the decoder layer output).
        layer: the decoder layer whose output is intervened on (0-based).
        rank: the subspace's dimension r.
        lr: AdamW's learning rate.
        epochs: passes over the fit pairs.
        seed: seeds the initialisation and the batch order.
        positions: "last_prompt" (the last prompt token only), "response" (it and every
            continuation / generated token) or "all" (every real position).
        strength: scales the edit at apply time (1 = the trained LoReFT, 0 = unsteered);
            a sweep over it shares one fit.
        train_batch_size: pairs per training step (a hyperparameter: it keys the fit).
        batch_size: unused (the common constructor signature of steerers).
        progress: show a progress bar while training.
    """

    spec = MethodSpec(
        name="reft",
        strength="strength",
        identity=0.0,
        size="rank",
        axes=("rank", "strength"),
        apply_params=("strength",),
        components=("residual",),
        default_component="residual",
    )

    def __init__(
        self,
        component: str = "residual",
        layer: int = 15,
        rank: int = 4,
        lr: float = 2e-3,
        epochs: int = 3,
        seed: int = 0,
        positions: ReftPositions = "last_prompt",
        strength: float = 1.0,
        train_batch_size: int = 8,
        batch_size: int = 16,
        progress: bool = True,
    ) -> None:
        super().__init__(component, batch_size, progress)
        self.layer = checks.integer("layer", layer, minimum=0, example="intervention.layer=15")
        self.rank = checks.positive_int("rank", rank, example="intervention.rank=4")
        self.training = TrainingParams.checked(lr, epochs, seed, train_batch_size)
        self.lr, self.epochs, self.seed = self.training.lr, self.training.epochs, self.training.seed
        self.train_batch_size = self.training.batch_size
        self.positions: ReftPositions = checks.choice("positions", positions, REFT_POSITIONS)
        self.edit_policy: PositionPolicy = self.positions
        self.edit_generated = self.positions != "last_prompt"
        self.strength = checks.finite("strength", strength)
        self.losses: list[float] = []  # the last fit's mean loss per epoch
        self._live: _Trainable | None = None  # the parameters being trained, during fit

    def _check_layer(self, n_layers: int) -> None:
        checks.layer_in_range(self.layer, n_layers)

    def _share_fit(self, source: LoReFT) -> None:
        self._live = source._live

    # ----- fit -----------------------------------------------------------------------
    def fit(
        self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, pairs: Sequence[Pair]
    ) -> Self:
        """Train R, W and b on the pairs' positive completions (deterministic)."""
        check_pairs(pairs)
        shape = model_shape(model)
        self._check_layer(shape.n_layers)
        if self.rank > shape.d_model:
            raise ValueError(f"rank={self.rank} exceeds d_model={shape.d_model}")
        self._remember_model(model, len(pairs))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            live = _Trainable(shape.d_model, self.rank)
        live.to(module_device(decoder_layers(model)[self.layer]))  # where its layer computes
        self._live = live
        self.state = self._state_of(live)  # a placeholder until trained: apply needs a state
        try:
            self.losses = train(
                self.with_params(strength=1.0),  # the training forward is the apply at 1
                model,
                tokenizer,
                pairs,
                list(live.parameters()),
                self.training,
                progress=self.progress,
                desc=f"LoReFT fit (layer {self.layer})",
            )
        finally:
            self._live = None
        self.state = self._state_of(live)
        return self

    @staticmethod
    def _state_of(live: _Trainable) -> ReFTState:
        with torch.no_grad():
            r, w, b = (t.detach().float().cpu().clone() for t in live.tensors())
        return ReFTState(rotation=r, weight=w, bias=b)

    # ----- apply ---------------------------------------------------------------------
    def selected_layers(self) -> list[int]:
        return [self.layer]

    def _edit_fns(self, model: nn.Module) -> dict[int, EditFn]:
        self._check_layer(len(decoder_layers(model)))
        if self.strength == 0.0:  # the identity: register nothing
            return {}
        state, live, s = self.fitted_state(), self._live, self.strength

        def edit(layer: int, act: Tensor, rows: Tensor, pos: Tensor) -> Tensor:
            if live is not None:  # training: the current parameters, with their gradients
                r, w, b = live.tensors()
            else:
                r, w, b = state.rotation, state.weight, state.bias
            r, w, b = (t.to(act.device) for t in (r, w, b))
            h = act[rows, pos].float()
            delta = (h @ w.T + b - h @ r.T) @ r
            return act.index_put((rows, pos), (h + s * delta).to(act.dtype))

        return {self.layer: edit}

    # ----- artifacts -----------------------------------------------------------------
    def _check_state(self, state: ReFTState) -> ReFTState:
        r = check_finite_tensor("rotation", state.rotation).float()
        w = check_finite_tensor("weight", state.weight).float()
        b = check_finite_tensor("bias", state.bias).float()
        d = int(r.shape[-1]) if self.shape is None else self.shape.d_model
        for name, t, expected in (
            ("rotation", r, (self.rank, d)),
            ("weight", w, (self.rank, d)),
            ("bias", b, (self.rank,)),
        ):
            check_tensor_shape(name, t, expected, f"rank {self.rank} x d_model {d}")
        eye = torch.eye(self.rank)
        if not torch.allclose(r @ r.T, eye, atol=ORTHONORMAL_ATOL):
            raise ValueError("LoReFT rotation rows are not orthonormal: the file is not a fit")
        if self.shape is not None:
            self._check_layer(self.shape.n_layers)
        return ReFTState(rotation=r, weight=w, bias=b)


__all__ = ["LoReFT", "REFT_POSITIONS", "ReFTState", "ReftPositions"]
