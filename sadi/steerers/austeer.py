"""AUSteer: atomic-unit steering ("steering less achieves more", arXiv 2602.04428).

An atomic unit (AU) is one dimension of one block activation of one layer; the unit grid of
a component is [n_layers, width]. The paper's three sites are project components:

- `attention` -> `head`: the input of the attention output projection (all heads
  concatenated, width n_heads x head_dim, which differs from d_model on e.g. Gemma);
- `ffn` -> `hidden`: the MLP block output, before the residual add (the down projection's
  output; on Gemma before `post_feedforward_layernorm`, on BLOOM before its fused add);
- `layer` -> `residual`: the decoder layer output.

`neuron` and `neuron_down` (d_ff units) work the same way; they are not in the paper.

Fit (activation momentum): for each pair n read the site of every layer at the last token
of the whole sequence, prompt + positive and prompt + negative (each row's own last real
token), and take d_n = pos_n - neg_n. Per unit, with N pairs, r_pos = #(d > 0) / N and
r_neg = #(d < 0) / N (exact zeros count for neither side but stay in N);
beta = r_pos if #(d > 0) >= #(d < 0) else -r_neg. Ties come out positive, as in the
authors' code; `ties="negative"` follows the paper's text instead. The mean difference
mean_n d_n is kept too (the `diff` ablation ranks by it), so one fit serves every k,
alpha and variant: the state is two [n_layers, width] float32 tensors.

Selection: all units of the site, pooled across layers, ranked by |beta| (stable: ties go
to the lower layer, then the lower dimension); exactly the top k.

Edit: x_i <- (1 + alpha * beta_i) * x_i on the selected units (every other unit untouched)
at every position of every forward: the whole prompt, the continuation, and every token
generated with the KV cache. Scoring and generation therefore edit the same cells. The
paper calls this edit sign-preserving; it is not: on a unit with beta_i < 0 and
alpha * |beta_i| > 1 the factor is negative and flips the activation's sign (e.g. alpha=15,
beta=-0.6 multiplies by -8).

Variants (the paper's ablations): `random` (k units drawn uniformly, seeded; edited with
their own beta), `diff` (units ranked by |mean difference| instead of |beta|),
`fixed_strength` (factor 1 + alpha * sign(beta_i), the momentum's size dropped).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor, nn
from transformers.tokenization_utils_base import PreTrainedTokenizerBase
from typing_extensions import Self

from sadi.core.activations import read_pair_activations
from sadi.core.architectures import ModelShape, model_shape, model_site
from sadi.core.positions import PaddingSide, PositionPolicy
from sadi.data.pairs import Pair
from sadi.infra import checks
from sadi.steerers.artifacts import check_finite_tensor, check_tensor_shape
from sadi.steerers.base import EditFn, Steerer, check_pairs
from sadi.steerers.spec import MethodSpec

AUSteerVariant = Literal["momentum", "random", "diff", "fixed_strength"]
VARIANTS: tuple[str, ...] = get_args(AUSteerVariant)
TieRule = Literal["positive", "negative"]
TIE_RULES: tuple[str, ...] = get_args(TieRule)
# the paper's site names -> the project's components
SITES: dict[str, str] = {"attention": "head", "ffn": "hidden", "layer": "residual"}
# pairs read per pass of `fit` (positives and negatives together): bounds the memory of the
# activations held at once to 2 x CHUNK_PAIRS x n_layers x width floats
CHUNK_PAIRS = 256


@dataclass
class AUSteerState:
    """Fitted AUSteer state, one value per atomic unit [n_layers, width], float32.

    beta: the activation momentum, in [-1, 1] (a multiple of 1 / n_pairs).
    mean_diff: mean over pairs of pos - neg at the read position (ranks the `diff` variant).
    """

    beta: Tensor
    mean_diff: Tensor


def momentum(diff: Tensor, ties: TieRule = "positive") -> Tensor:
    """Activation momentum of each unit from its differences `diff` [N, ...] (pos - neg).

    Exact zeros count for neither side but stay in N. Ties (#(d>0) == #(d<0)) come out
    positive under `ties="positive"` (the authors' code) and negative under "negative".
    """
    return momentum_from_counts((diff > 0).sum(0), (diff < 0).sum(0), diff.shape[0], ties)


def momentum_from_counts(n_pos: Tensor, n_neg: Tensor, n: int, ties: TieRule) -> Tensor:
    """beta = #(d>0)/N if the positive side wins (ties by `ties`), else -#(d<0)/N."""
    positive = n_pos >= n_neg if ties == "positive" else n_pos > n_neg
    beta = torch.where(positive, n_pos.double() / n, -(n_neg.double() / n))
    return (beta + 0.0).float()  # + 0.0: no negative zero when both counts are 0


def select_units(
    beta: Tensor, mean_diff: Tensor, k: int, variant: AUSteerVariant = "momentum", seed: int = 0
) -> tuple[Tensor, Tensor]:
    """(layers, dims) of the k units `variant` selects from a fitted state [n_layers, width].

    momentum / fixed_strength: top-k by |beta|; diff: top-k by |mean_diff|; random: k units
    drawn uniformly without replacement (seeded). The sort is stable, so equal scores go to
    the lower layer, then the lower dimension (the authors' stable sort).
    """
    n_layers, width = beta.shape
    if not 1 <= k <= n_layers * width:
        raise ValueError(
            f"k={k} is outside the {n_layers * width} atomic units of this fit "
            f"({n_layers} layers x {width}); choose 1 <= k <= {n_layers * width}"
        )
    if variant == "random":
        gen = torch.Generator().manual_seed(seed)
        flat = torch.randperm(n_layers * width, generator=gen)[:k]
    else:
        score = mean_diff if variant == "diff" else beta
        flat = torch.sort(score.abs().flatten(), descending=True, stable=True).indices[:k]
    return flat // width, flat % width


class AUSteer(Steerer[AUSteerState]):
    """Atomic-unit steering: rescale the k units of largest activation momentum.

    Args:
        component: the site: "head" (the paper's `attention`), "hidden" (`ffn`) or
            "residual" (`layer`); "neuron" and "neuron_down" also work.
        k: number of units steered, across all layers (1 <= k <= n_layers x width).
        alpha: steering strength; a unit becomes (1 + alpha * beta) * x. 0 is the
            unsteered model, bit for bit.
        variant: "momentum" (AUSteer), or the paper's ablations "random", "diff",
            "fixed_strength" (see the module docstring).
        ties: "positive" (the authors' code) or "negative" (the paper's text): the sign of
            beta when as many pairs move a unit up as down.
        seed: seeds the "random" variant.
        batch_size: batch size of the fitting passes.
        progress: show a progress bar while fitting.

    Only `ties` changes what `fit` computes; `k`, `alpha`, `variant` and `seed` act at
    steering time, so one fit serves a whole k x alpha grid (`with_params`).

    Example:
        >>> au = AUSteer("hidden", k=16, alpha=50.0).fit(model, tokenizer, pairs)
        >>> with au.apply(model):
        ...     out = model.generate(**tokenizer(prompts, return_tensors="pt"))
        >>> with au.with_params(k=100, alpha=15.0).apply(model):
        ...     ...
    """

    spec = MethodSpec(
        name="austeer",
        strength="alpha",
        identity=0.0,
        size="k",
        axes=("k", "alpha"),
        # only `ties` changes what fit() computes: one fit serves a whole k x alpha grid
        apply_params=("k", "alpha", "variant", "seed"),
        default_component="head",
    )
    edit_policy: PositionPolicy = "all"
    edit_generated = True

    def __init__(
        self,
        component: str = "head",
        k: int = 16,
        alpha: float = 10.0,
        variant: AUSteerVariant = "momentum",
        ties: TieRule = "positive",
        seed: int = 0,
        batch_size: int = 16,
        progress: bool = True,
    ) -> None:
        super().__init__(component, batch_size, progress)
        self.k = checks.positive_int(
            "k",
            k,
            "intervention.k=16 (AUSteer steers exactly k atomic units, at most n_layers x "
            "width of the site)",
        )
        self.alpha = checks.finite("alpha", alpha)
        self.variant: AUSteerVariant = checks.choice("variant", variant, VARIANTS)
        self.ties: TieRule = checks.choice(
            "ties",
            ties,
            TIE_RULES,
            "positive: the authors' code (a tied unit gets beta = +#(d>0)/N); negative: the "
            "paper's text",
        )
        self.seed = checks.integer("seed", seed)

    def _share_fit(self, source: AUSteer) -> None:
        if self.shape is not None:
            self._check_k(self.shape)

    def n_units(self, shape: ModelShape) -> int:
        """Number of atomic units of this site: n_layers x width."""
        return shape.n_layers * shape.width(self.component)

    def _check_k(self, shape: ModelShape) -> None:
        n = self.n_units(shape)
        if self.k > n:
            raise ValueError(
                f"k={self.k} exceeds the {n} atomic units of component {self.component!r} on "
                f"this model ({shape.n_layers} layers x {shape.width(self.component)} "
                f"dimensions); choose 1 <= k <= {n}"
            )

    # ----- fit -----------------------------------------------------------------------
    def fit(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        pairs: Sequence[Pair],
        *,
        padding_side: PaddingSide = "right",
    ) -> Self:
        """Activation momentum and mean difference of every unit of the site.

        Deterministic: a function of the model, the pairs and `ties` only. `padding_side`
        pads the fitting batches on that side (the result does not depend on it).
        """
        check_pairs(pairs, minimum=2)  # the sign of each unit's difference is counted
        model_site(model, self.component)  # a site the architecture lacks fails here
        shape = model_shape(model)
        self._check_k(shape)
        shape = self._remember_model(model, len(pairs))
        n_layers, width = shape.n_layers, shape.width(self.component)
        n_pos = torch.zeros(n_layers, width, dtype=torch.long)
        n_neg = torch.zeros(n_layers, width, dtype=torch.long)
        total = torch.zeros(n_layers, width, dtype=torch.float64)
        for start in range(0, len(pairs), CHUNK_PAIRS):
            chunk = pairs[start : start + CHUNK_PAIRS]
            pos, neg = read_pair_activations(
                model,
                tokenizer,
                chunk,
                self.component,
                shape,
                batch_size=self.batch_size,
                progress=self.progress,
                padding_side=padding_side,
                desc=f"AUSteer fit ({self.component})",
            )  # [chunk, layers, width] each
            diff = pos - neg  # [chunk, layers, width]
            n_pos += (diff > 0).sum(0)
            n_neg += (diff < 0).sum(0)
            total += diff.double().sum(0)
        self.state = AUSteerState(
            beta=momentum_from_counts(n_pos, n_neg, len(pairs), self.ties),
            mean_diff=(total / len(pairs)).float(),
        )
        return self

    # ----- selection and apply ---------------------------------------------------------
    def selected_units(self) -> tuple[Tensor, Tensor]:
        """(layers, dims): the k selected units, long tensors, in rank order."""
        state = self.fitted_state()
        return select_units(state.beta, state.mean_diff, self.k, self.variant, self.seed)

    def unit_factors(self) -> Tensor:
        """[k] float32: the factor (1 + gamma_i) each selected unit is multiplied by, in the
        order of `selected_units` (gamma = alpha * beta, or alpha * sign(beta) for
        `fixed_strength`)."""
        layers, dims = self.selected_units()
        beta = self.fitted_state().beta[layers, dims]
        gamma = beta.sign() if self.variant == "fixed_strength" else beta
        return 1.0 + self.alpha * gamma

    def selected_layers(self) -> list[int]:
        return sorted({int(layer) for layer in self.selected_units()[0]})

    def _edit_fns(self, model: nn.Module) -> dict[int, EditFn]:
        self._check_k(model_shape(model))
        if self.alpha == 0.0:  # the identity: register nothing
            return {}
        layers, dims = self.selected_units()
        factors = self.unit_factors()
        per_layer = {
            int(layer): (dims[layers == layer], factors[layers == layer])
            for layer in layers.unique()
        }

        def edit(layer: int, act: Tensor, rows: Tensor, pos: Tensor) -> Tensor:
            cols, scale = per_layer[layer]
            cols = cols.to(act.device)
            scale = scale.to(device=act.device, dtype=act.dtype)
            if rows.numel() == act.shape[0] * act.shape[1]:  # every cell (no padding)
                return act.index_copy(-1, cols, act.index_select(-1, cols) * scale)
            r, p, c = rows[:, None], pos[:, None], cols[None, :]
            return act.index_put((r, p, c), act[r, p, c] * scale)

        return {layer: edit for layer in per_layer}

    # ----- artifacts -----------------------------------------------------------------
    def _check_state(self, state: AUSteerState) -> AUSteerState:
        """The loaded state, checked against the recorded model (if any) and `k`."""
        beta = check_finite_tensor("beta", state.beta)
        mean_diff = check_finite_tensor("mean_diff", state.mean_diff)
        if self.shape is not None:
            grid = (self.shape.n_layers, self.shape.width(self.component))
            where = f"[n_layers, {self.component} width] of the recorded fingerprint"
            check_tensor_shape("beta", beta, grid, where)
            check_tensor_shape("mean_diff", mean_diff, grid, where)
            self._check_k(self.shape)
        else:
            if beta.dim() != 2:
                raise ValueError(f"tensor 'beta' must be [layers, width], got {list(beta.shape)}")
            check_tensor_shape("mean_diff", mean_diff, beta.shape, "the shape of 'beta'")
        if bool((beta.abs() > 1).any()):
            raise ValueError(
                f"tensor 'beta' holds values outside [-1, 1] (max |beta| = "
                f"{float(beta.abs().max()):.4g}); an activation momentum is a fraction of pairs"
            )
        return AUSteerState(beta=beta, mean_diff=mean_diff)


__all__ = [
    "AUSteer",
    "AUSteerState",
    "AUSteerVariant",
    "SITES",
    "TIE_RULES",
    "VARIANTS",
    "momentum",
    "momentum_from_counts",
    "select_units",
]
