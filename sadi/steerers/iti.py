"""ITI: Inference-Time Intervention (Li et al. 2023, arXiv 2306.03341).

Fit: label prompt+positive as true (1) and prompt+negative as false (0) and read every
attention head's output (the input of the attention output projection, split per head) at
the last token of each text. Pairs (not texts) are split, seeded, into a train part and a
held-apart part, so both texts of a pair fall on the same side. One logistic-regression
probe per (layer, head) is trained on the train part and scored by accuracy on the held-apart
part; the K most accurate heads are selected (K is an apply parameter: the fit keeps theta
and sigma of every head, so every K of a grid shares one fit). Per head:

- theta: the unit direction, either the mass-mean shift mu_true - mu_false ("mass_mean", the
  authors' best variant) or the probe's weight vector ("probe");
- sigma: the standard deviation of the activations projected on theta.

Which activations feed theta and sigma follows the authors' code (`get_com_directions` and
`get_interventions_dict` in the honest_llama repository): the mass mean is taken over their
whole training fold, i.e. their probe-train plus probe-validation questions, which here is
every fit pair (train part and held-apart part); sigma is `np.std` (population, ddof=0) of the
projections of all tuning activations, here again every fit text of both classes. The
held-apart part only ever scores the probes; the task's report split is never seen.

Apply: x_{l,h} <- x_{l,h} + alpha * sigma_{l,h} * theta_{l,h} at the attention output
projection's input of the selected heads, from the last prompt token of a scored row on
(`positions="response"`: that token's output predicts the first answer token, then every
continuation token) or at every real position (`positions="all"`), and at every token
generated with a KV cache. Scoring and generation edit the same cells: `generate` edits
the prefill's last token (the whole prefill under "all") and every decoded token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers.tokenization_utils_base import PreTrainedTokenizerBase
from typing_extensions import Self

from sadi.core.activations import read_pair_activations
from sadi.core.architectures import model_shape
from sadi.core.positions import AnswerPositions, PositionPolicy, answer_positions
from sadi.data.pairs import Pair
from sadi.infra import checks
from sadi.steerers.artifacts import check_finite_tensor, check_mask, check_tensor_shape
from sadi.steerers.base import EditFn, Steerer, check_pairs
from sadi.steerers.spec import MethodSpec

ItiDirection = Literal["mass_mean", "probe"]
ItiPositions = AnswerPositions
ItiHeads = Literal["top", "random"]

# the authors' K for a 32-layer x 32-head (1024 heads) 7B model
AUTHORS_K = 48
AUTHORS_N_HEADS = 1024


@dataclass
class ITIState:
    """Fitted ITI state (L layers, H heads, head_dim d).

    accuracy: [L, H] float32, each head's probe accuracy on the held-apart pairs.
    mask: [L, H] bool, the K selected heads (the K most accurate).
    direction: [L, H, d] float32, unit theta of every head (edited only where `mask` is set,
        so another K selects from the same fit).
    sigma: [L, H] float32, std of the projections on theta, for every head.
    """

    accuracy: Tensor
    mask: Tensor
    direction: Tensor
    sigma: Tensor


class ITI(Steerer[ITIState]):
    """Inference-time intervention on the top-K attention heads by probe accuracy.

    Args:
        component: must be "head" (ITI edits attention heads only).
        k: number of heads to edit, across layers. The authors' default 48 is for 7B models
            with 32 x 32 = 1024 heads; the comparable setting for a smaller model keeps the
            same fraction, `ITI.scaled_k(L * H)` = round(48 / 1024 * L * H), e.g. 13 for
            SmolLM2-135M's 30 x 9 = 270 heads.
        alpha: strength; each edited head moves by alpha standard deviations along theta
            (authors' default 15). alpha = 0 registers no hook at all.
        direction: "mass_mean" (mu_true - mu_false) or "probe" (the probe's weights).
        positions: cells edited in a full forward: "response" (the last prompt token,
            which predicts the first answer token, and every continuation token of a
            scored row) or "all" (every real token, prompt included). Tokens generated
            with a KV cache are edited in both cases; a `generate` prefill is edited at its
            last token ("response") or everywhere ("all"), so scoring a continuation and
            generating it teacher-forced edit the same cells. "continuation", the old
            name, is read as "response".
        heldout: fraction of the pairs held apart to score the probes, in (0, 1); the
            train part has int(n_pairs * (1 - heldout)) pairs, as in the authors' code.
            The held-apart pairs only score the probes for selection; the mass-mean theta
            and sigma use every fit pair, as the authors' code does.
        seed: seeds the pair split and the probes' `random_state` (authors: 42), and the
            random heads of the control.
        heads: "top" (the k heads whose probes are most accurate, ITI) or "random" (the
            control: k heads drawn with `seed`, each shifted by its own fitted theta and
            sigma); an apply parameter, so the control shares ITI's fit.
        batch_size: batch size of the activation-reading passes.
        progress: show progress bars while fitting.

    Example:
        >>> iti = ITI(k=ITI.scaled_k(270), alpha=15.0).fit(model, tokenizer, pairs)
        >>> batch = encode(tokenizer, prompts, continuations)
        >>> with iti.apply(model) as handle:
        ...     handle.set_layout(batch.layout)
        ...     logits = model(batch.input_ids, attention_mask=batch.attention_mask).logits
    """

    spec = MethodSpec(
        name="iti",
        strength="alpha",
        identity=0.0,
        size="k",
        axes=("k", "alpha"),
        # k only chooses heads by the fitted probe accuracies: every k of a grid shares one fit
        apply_params=("k", "alpha", "positions", "heads"),
        components=("head",),
        default_component="head",
    )
    edit_generated = True

    def __init__(
        self,
        component: str = "head",
        k: int = AUTHORS_K,
        alpha: float = 15.0,
        direction: ItiDirection = "mass_mean",
        positions: ItiPositions = "response",
        heldout: float = 0.2,
        seed: int = 42,
        heads: ItiHeads = "top",
        batch_size: int = 16,
        progress: bool = True,
    ) -> None:
        super().__init__(component, batch_size, progress)
        self.k = checks.positive_int(
            "k", k, "intervention.k=48, or ITI.scaled_k(n_layers * n_heads) below 7B"
        )
        self.alpha = checks.finite("alpha", alpha)
        self.direction: ItiDirection = checks.choice("direction", direction, ("mass_mean", "probe"))
        self.positions: ItiPositions = answer_positions(positions)
        self.edit_policy: PositionPolicy = self.positions
        self.heldout = checks.fraction("heldout", heldout)
        self.seed = checks.integer("seed", seed)
        self.heads: ItiHeads = checks.choice("heads", heads, ("top", "random"))
        # per layer and head, the mean cosine of the pair differences to their mean (the last
        # fit's; Braun et al.'s consistency), [L][H]
        self.consistency: list[list[float]] = []
        # "all": theta and sigma of every head are stored (another k may select from the
        # fit); "selected": an artifact of an older sadi, only its own k heads' (steerer.json)
        self.heads_stored = "all"

    @staticmethod
    def scaled_k(n_heads_total: int) -> int:
        """K for a model with `n_heads_total` heads, at the authors' 48-of-1024 fraction.

        Rounds half up, and never below 1: `scaled_k(1024) == 48`, `scaled_k(270) == 13`.
        """
        if isinstance(n_heads_total, bool) or not isinstance(n_heads_total, int):
            raise TypeError(f"n_heads_total must be an int, got {n_heads_total!r}")
        if n_heads_total <= 0:
            raise ValueError(f"n_heads_total must be positive, got {n_heads_total}")
        return max(1, (2 * AUTHORS_K * n_heads_total + AUTHORS_N_HEADS) // (2 * AUTHORS_N_HEADS))

    @staticmethod
    def split_pairs(n_pairs: int, heldout: float, seed: int) -> tuple[Tensor, Tensor]:
        """(train, held_apart): sorted pair indices of a seeded split of `n_pairs` pairs.

        The train part has int(n_pairs * (1 - heldout)) pairs (either part may be empty).
        """
        n_train = int(n_pairs * (1.0 - heldout))
        perm = torch.randperm(n_pairs, generator=torch.Generator().manual_seed(seed))
        return perm[:n_train].sort().values, perm[n_train:].sort().values

    # ----- fit -----------------------------------------------------------------------
    def fit(
        self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, pairs: Sequence[Pair]
    ) -> Self:
        """Probe every head, select the top-K, and compute theta and sigma (deterministic).

        Args:
            model: the causal LM to steer later.
            tokenizer: its tokenizer.
            pairs: contrastive pairs; each gives one true and one false text.

        Returns:
            self, with `state` set.

        Side effects: runs forward passes of `model` (no gradients) and fits L * H
        scikit-learn probes, in float64.
        """
        check_pairs(pairs)
        shape = model_shape(model)
        n_layers, n_heads, head_dim = shape.n_layers, shape.n_heads, shape.head_dim
        if self.k > n_layers * n_heads:
            raise ValueError(
                f"k={self.k} is above the number of heads of this model, {n_layers * n_heads} "
                f"({n_layers} layers x {n_heads} heads); choose k <= {n_layers * n_heads}, "
                f"e.g. ITI.scaled_k({n_layers * n_heads}) = {self.scaled_k(n_layers * n_heads)}"
            )
        n = len(pairs)
        train_pairs, held_pairs = self.split_pairs(n, self.heldout, self.seed)
        labels = torch.cat([torch.ones(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)])
        # text rows: 0..n-1 are prompt+positive (true), n..2n-1 prompt+negative (false)
        train = torch.cat([train_pairs, train_pairs + n])
        held = torch.cat([held_pairs, held_pairs + n])
        for part, rows, n_part in (
            ("train", train, len(train_pairs)),
            ("held-apart", held, len(held_pairs)),
        ):
            classes = sorted(set(labels[rows].tolist()))
            if classes != [0, 1]:
                raise ValueError(
                    f"the {part} part holds {n_part} of the {n} pairs, with labels {classes}; "
                    "the probes need both a true and a false text in the train and in the "
                    "held-apart part. Give pairs with both a true and a false completion, more "
                    f"pairs, or a different heldout (now {self.heldout}: the train part gets "
                    "int(n_pairs * (1 - heldout)) pairs)"
                )

        pos, neg = read_pair_activations(
            model,
            tokenizer,
            pairs,
            "head",
            shape,
            batch_size=self.batch_size,
            progress=self.progress,
            desc="ITI fit (head)",
        )  # [pairs, layers, heads * head_dim] each
        heads = torch.cat([pos, neg]).double().view(2 * n, n_layers, n_heads, head_dim)
        accuracy, coef = self._probe(heads, labels, train, held)  # [L, H], [L, H, d]

        mask = self._select(accuracy)
        diffs = (heads[:n] - heads[n:]).float()  # [pairs, L, H, d]: each pair's difference
        cos = nn.functional.cosine_similarity(diffs, diffs.mean(0, keepdim=True), dim=-1)
        self.consistency = cos.mean(0).tolist()  # [L][H]

        if self.direction == "mass_mean":
            raw = heads[:n].mean(dim=0) - heads[n:].mean(dim=0)  # [L, H, d], every fit text
        else:
            raw = coef
        norm = raw.norm(dim=-1, keepdim=True)  # [L, H, 1]
        # a zero vector (identical class means) stays zero: that head is then not moved
        theta = torch.where(norm > 0, raw / norm.clamp(min=1e-300), torch.zeros_like(raw))
        proj = (heads * theta).sum(dim=-1)  # [2 * pairs, L, H]
        sigma = proj.std(dim=0, correction=0)  # [L, H], population std like np.std

        self.state = ITIState(
            accuracy=accuracy.float(), mask=mask, direction=theta.float(), sigma=sigma.float()
        )
        self.heads_stored = "all"
        self._remember_model(model, n)
        return self

    def _select(self, accuracy: Tensor) -> Tensor:
        """[L, H] bool: the k most accurate heads; a stable sort sends equal accuracies to
        the lower (layer, head) index, deterministically."""
        n_layers, n_heads = accuracy.shape
        if self.k > n_layers * n_heads:
            raise ValueError(
                f"k={self.k} is above the number of heads of this model, {n_layers * n_heads} "
                f"({n_layers} layers x {n_heads} heads); choose k <= {n_layers * n_heads}, "
                f"e.g. ITI.scaled_k({n_layers * n_heads}) = {self.scaled_k(n_layers * n_heads)}"
            )
        if self.heads == "random":  # the control: k heads drawn with `seed`, their own fit
            generator = torch.Generator().manual_seed(self.seed)
            chosen = torch.randperm(n_layers * n_heads, generator=generator)[: self.k]
        else:
            order = torch.sort(accuracy.flatten(), descending=True, stable=True)
            chosen = order.indices[: self.k]
        mask = torch.zeros(n_layers * n_heads, dtype=torch.bool)
        mask[chosen] = True
        return mask.view(n_layers, n_heads)

    def _share_fit(self, source: Self) -> None:
        """Another k (or the random-heads control) selects its own heads from the same fit's
        accuracies."""
        self.heads_stored, self.consistency = source.heads_stored, source.consistency
        s = self.state
        if s is None or (int(s.mask.sum()) == self.k and self.heads == source.heads):
            return
        if self.heads_stored != "all":
            raise ValueError(
                f"this ITI steerer stores theta and sigma of its own {int(s.mask.sum())} heads "
                f"only (saved by a sadi before k became an apply parameter), so k={self.k} "
                "cannot select from it; refit it with this k"
            )
        self.state = ITIState(s.accuracy, self._select(s.accuracy), s.direction, s.sigma)

    def extra_metadata(self) -> dict[str, Any]:
        return {"heads_stored": self.heads_stored, "consistency": self.consistency}

    def _read_extra_metadata(self, meta: dict[str, Any]) -> None:
        stored = meta.get("heads_stored", "selected")  # absent: written before it existed
        if stored not in ("all", "selected"):
            raise ValueError(f"'heads_stored' must be 'all' or 'selected', got {stored!r}")
        self.heads_stored = stored
        self.consistency = [[float(v) for v in row] for row in meta.get("consistency") or []]

    def adopt(self, fitted: Steerer[Any]) -> Self:
        super().adopt(fitted)
        if isinstance(fitted, ITI):
            self.heads_stored = fitted.heads_stored
        return self

    def _probe(
        self, heads: Tensor, labels: Tensor, train: Tensor, held: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Per head: held-apart accuracy [L, H] and probe weights [L, H, d], float64."""
        _, n_layers, n_heads, head_dim = heads.shape  # [texts, L, H, d]
        x_train, x_held = heads[train].numpy(), heads[held].numpy()
        y_train, y_held = labels[train].numpy(), labels[held].numpy()
        accuracy = np.zeros((n_layers, n_heads))
        coef = np.zeros((n_layers, n_heads, head_dim))
        cells = [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
        # each probe is a tiny problem (head_dim features); a multithreaded BLAS only spins
        # on it (10-20x slower measured on 2 cores), so run one BLAS thread while probing
        with threadpool_limits(limits=1, user_api="blas"):
            for layer, head in tqdm(cells, desc="ITI probes", disable=not self.progress):
                probe = LogisticRegression(max_iter=1000, random_state=self.seed)
                probe.fit(x_train[:, layer, head], y_train)
                accuracy[layer, head] = probe.score(x_held[:, layer, head], y_held)
                coef[layer, head] = probe.coef_[0]  # points towards class 1 (true)
        return torch.from_numpy(accuracy), torch.from_numpy(coef)

    # ----- apply ---------------------------------------------------------------------
    def selected_heads(self) -> list[tuple[int, int]]:
        """The selected (layer, head) pairs, in (layer, head) order."""
        return [(int(a), int(b)) for a, b in self.fitted_state().mask.nonzero().tolist()]

    def selected_layers(self) -> list[int]:
        return [int(i) for i in self.fitted_state().mask.any(dim=1).nonzero().flatten()]

    def shift(self) -> Tensor:
        """[L, H, d] float32: alpha * sigma * theta per selected head, zero for the others."""
        s = self.fitted_state()
        return self.alpha * (s.sigma * s.mask).unsqueeze(-1) * s.direction

    def _edit_fns(self, model: nn.Module) -> dict[int, EditFn]:
        if self.alpha == 0.0:  # the identity, bit for bit: register nothing
            return {}
        s = self.fitted_state()
        head_dim = s.direction.shape[-1]
        masks = s.mask.repeat_interleave(head_dim, dim=1)  # [L, width]
        shifts = self.shift().flatten(start_dim=1)  # [L, width]
        # torch.where leaves unselected heads' elements exactly as they are (x + 0 could
        # turn -0.0 into 0.0); one device/dtype copy per layer for the whole `apply` block
        moved: dict[tuple[int, torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}

        def edit(layer: int, act: Tensor, rows: Tensor, pos: Tensor) -> Tensor:
            key = (layer, act.device, act.dtype)
            if key not in moved:
                moved[key] = (
                    masks[layer].to(act.device),
                    shifts[layer].to(device=act.device, dtype=act.dtype),
                )
            m, v = moved[key]  # [width], [width]
            live = act[rows, pos]  # [cells, width]
            return act.index_put((rows, pos), torch.where(m, live + v, live))

        return {layer: edit for layer in self.selected_layers()}

    # ----- artifacts -----------------------------------------------------------------
    def _check_state(self, state: ITIState) -> ITIState:
        """The loaded state, checked against the recorded model (if any) and `k`."""
        accuracy = check_finite_tensor("accuracy", state.accuracy)
        mask = check_mask("mask", state.mask)
        direction = check_finite_tensor("direction", state.direction)
        sigma = check_finite_tensor("sigma", state.sigma)
        if self.shape is not None:
            grid = (self.shape.n_layers, self.shape.n_heads)
            source = "the recorded fingerprint"
            head_dim = self.shape.head_dim
        elif direction.dim() == 3:
            grid, head_dim = (direction.shape[0], direction.shape[1]), direction.shape[2]
            source = "'direction'"
        else:
            raise ValueError(
                f"tensor 'direction' must be [layers, heads, head_dim], got {list(direction.shape)}"
            )
        for name, tensor in (("accuracy", accuracy), ("mask", mask), ("sigma", sigma)):
            check_tensor_shape(name, tensor, grid, f"[n_layers, n_heads] of {source}")
        check_tensor_shape(
            "direction", direction, (*grid, head_dim), f"[n_layers, n_heads, head_dim] of {source}"
        )
        selected = int(mask.sum())
        if selected != self.k:
            raise ValueError(
                f"the mask selects {selected} heads but k={self.k} (in steerer.json); "
                "an ITI mask holds exactly k heads: correct k, or refit"
            )
        return ITIState(accuracy=accuracy, mask=mask, direction=direction, sigma=sigma)


__all__ = ["ITI", "ITIState"]
