"""The contract every steering method follows: fit, apply (a context manager), save, load.

A method subclasses `Steerer`, declares where it edits (`edit_policy`, `edit_generated`)
and implements `fit`, `_edit_fns` and its tensor/param (de)serialisation. Position tracking,
hook lifetime, fingerprints and artifacts live here, once.
"""

from __future__ import annotations

import json
import math
import platform
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import save_file
from torch import Tensor, nn
from transformers.tokenization_utils_base import PreTrainedTokenizerBase
from typing_extensions import Self

from sadi.core.architectures import (
    ModelShape,
    check_component,
    model_shape,
    model_site,
    weights_fingerprint,
)
from sadi.core.forwards import forward_kind
from sadi.core.hooks import Inputs, LayerHook, hooked, observe_forward
from sadi.core.positions import SUFFIX_POLICIES, BatchLayout, PositionPolicy
from sadi.core.shadow import drop_shadow
from sadi.data.pairs import Pair
from sadi.infra.errors import UserError
from sadi.steerers.artifacts import (
    META_FILE,
    TENSORS_FILE,
    ArtifactError,
    check_weights_value,
    read_metadata,
    read_tensors,
)

# (layer, activation [batch, pos, width], rows [n], positions [n]) -> edited activation
EditFn = Callable[[int, Tensor, Tensor, Tensor], Tensor]


class FingerprintMismatch(UserError):
    """A fitted steerer was applied to, or loaded for, a model of a different shape."""


class WeightsMismatch(FingerprintMismatch):
    """A fitted steerer was applied to, or loaded for, a model of its shape but other weights
    (e.g. the chat variant of the base model it was fitted on)."""


def _model_id(model: nn.Module) -> str:
    return str(getattr(getattr(model, "config", None), "name_or_path", "") or "")


def check_finite(name: str, value: float) -> float:
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_pairs(pairs: Sequence[Pair]) -> None:
    """Reject an empty pair list and pairs whose positive equals their negative."""
    if len(pairs) == 0:
        raise ValueError(
            "no contrastive pairs given; build them with sadi.data.pairs.make_pairs from the "
            "task's fit split (n_pairs > 0)"
        )
    for i, p in enumerate(pairs):
        if p.positive == p.negative:
            raise ValueError(
                f"pair {i} (item {p.item_id!r}) has positive == negative == {p.positive!r}; "
                "a contrastive pair needs two different completions"
            )


class SteeringHandle:
    """Handed out by `Steerer.apply`: tells the hooks where the current batch's rows are.

    By default the layout of each forward is read off its attention mask, with the whole
    row taken as the prompt (right for plain prompts and for `generate`). Callers scoring
    prompt + continuation rows set the layout explicitly before each forward.
    """

    def __init__(self) -> None:
        self.layout: BatchLayout | None = None
        # the sweep engine's suffix forwards (`sadi.sweep.prefix`): rows continue cached
        # prefixes (unsteered, or this steerer's own when it edits the prompt); `clean` holds
        # the unsteered activations at the last prompt token
        self.continues_prefix = False
        self.clean: dict[int, Tensor] = {}

    def set_layout(self, layout: BatchLayout | None) -> None:
        """Use `layout` for the following forwards (None: read it off the attention mask)."""
        self.layout, self.continues_prefix, self.clean = layout, False, {}

    def continue_prefix(self, layout: BatchLayout, clean: dict[int, Tensor]) -> None:
        """The following forwards continue cached prefixes (unsteered, or steered by this
        steerer when it edits the prompt too): each row of `layout` starts at its last
        prompt token (prompt length 1) and the positions before it are in the KV cache;
        `clean[layer]` [batch, width] is the unsteered activation of the component at that
        token (`Steerer.clean_layers`)."""
        self.layout, self.continues_prefix, self.clean = layout, True, clean


class Steerer(ABC):
    """Base class of all steering methods.

    Subclasses set `method`, `edit_policy` (which prompt/continuation cells to edit in a
    full forward) and `edit_generated` (whether to edit tokens produced by KV-cache decoding).
    """

    method: ClassVar[str]
    # hyperparameters that only change how a fitted state is applied, not the state itself:
    # a sweep over them reuses one fit (see `fit_key`)
    apply_params: ClassVar[tuple[str, ...]] = ()
    # where a full forward is edited, and whether KV-cache decoding steps are; a method may
    # set these per instance (e.g. ITI's "response" or "all")
    edit_policy: PositionPolicy = "last_prompt"
    edit_generated: bool = False

    def __init__(self, component: str) -> None:
        check_component(component)
        self.component = component
        self.shape: ModelShape | None = None
        # `weights_fingerprint` of the model it was fitted on; `accepted_weights` adds the
        # fingerprints of other weights the user vouched for (`load(allow_other_weights=True)`)
        self.weights_fingerprint: str | None = None
        self.accepted_weights: set[str] = set()
        self.model_id: str | None = None
        self.n_pairs: int = 0

    # ----- what a method implements -------------------------------------------------
    @abstractmethod
    def fit(
        self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, pairs: Sequence[Pair]
    ) -> Self:
        """Fit from contrastive pairs; returns self."""

    @abstractmethod
    def _edit_fns(self, model: nn.Module) -> dict[int, EditFn]:
        """One edit function per layer that is edited at all."""

    @abstractmethod
    def selected_layers(self) -> list[int]:
        """The decoder layers this fitted steerer edits, ascending."""

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Hyperparameters, JSON-serialisable, as accepted by the constructor."""

    @abstractmethod
    def tensors(self) -> dict[str, Tensor]:
        """The fitted state as named tensors."""

    @abstractmethod
    def _load_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Restore the fitted state from `tensors()` output.

        Raises ValueError (naming what was expected and what was found) unless the tensors
        are exactly those `tensors()` writes, with the shapes of the recorded fingerprint
        (when one is set) and consistent with the hyperparameters.
        """

    def prefix_unshared(self) -> str | None:
        """Why this steerer cannot score on a shared unsteered prefix (its edits reach
        positions before the last prompt token), or None when it can (`sadi.sweep`)."""
        if self.edit_policy in SUFFIX_POLICIES:
            return None
        return (
            f"{self.method} edits positions={self.edit_policy!r} (before the last prompt "
            "token), so no prefix is the same as the unsteered model's"
        )

    def clean_layers(self) -> list[int]:
        """Layers at which the edit reads the unsteered activation of the last prompt token
        (faithful SADI); the sweep engine takes them from its cached prefix pass."""
        return []

    def _use_clean(self, clean: dict[int, Tensor]) -> None:
        """Take the unsteered last-prompt-token activations of `clean_layers` for the
        following forward (called for the sweep engine's suffix forwards)."""

    def _before_full_forward(
        self, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], layout: BatchLayout
    ) -> Inputs | None:
        """Called before every non-decoding forward under `apply` (e.g. for a clean pass).

        May return replacement base-model inputs that append positions after the padded
        rows (faithful SADI's shadow, see `sadi.core.shadow`); `apply` cuts those positions off
        the base model's output again, so callers see the sequence length they passed.
        """
        return None

    # ----- shared machinery ----------------------------------------------------------
    def _remember_model(self, model: nn.Module, n_pairs: int) -> ModelShape:
        self.shape = model_shape(model)
        self.weights_fingerprint = weights_fingerprint(model)
        self.accepted_weights = set()
        self.model_id = _model_id(model)
        self.n_pairs = n_pairs
        return self.shape

    def with_params(self, **changes: Any) -> Self:
        """A copy with some `apply_params` changed, sharing this fit's state (a parameter
        outside `apply_params` changes what `fit` computes: changing it is an error).

        Example:
            >>> for multiplier in (-1.0, 1.0, 2.0):
            ...     with caa.with_params(multiplier=multiplier).apply(model): ...
        """
        current = self.params()
        for name, value in changes.items():
            if name not in current:
                raise ValueError(
                    f"{type(self).__name__} has no parameter {name!r}; its parameters: "
                    f"{sorted(current)}"
                )
            if name not in self.apply_params and value != current[name]:
                raise ValueError(
                    f"{name} changes what fit() computes; fit a new {type(self).__name__} "
                    f"with {name}={value!r} instead"
                )
        kwargs = {
            "component": self.component,
            **current,
            "batch_size": getattr(self, "batch_size", 16),
            "progress": getattr(self, "progress", True),
            **changes,
        }
        new = type(self)(**kwargs)
        new._copy_identity(self)
        new.state = self.state  # type: ignore[attr-defined]
        new._share_fit(self)
        return new

    def _share_fit(self, source: Self) -> None:
        """`with_params`' hook: take what else the fit carries (e.g. SAS's SAE) and check
        the new values against the recorded model (e.g. a layer in range)."""

    def _copy_identity(self, fitted: Steerer) -> None:
        """Take the model record (fingerprints, model id, pair count) of `fitted`."""
        self.shape, self.model_id, self.n_pairs = fitted.shape, fitted.model_id, fitted.n_pairs
        self.weights_fingerprint = fitted.weights_fingerprint
        self.accepted_weights = set(fitted.accepted_weights)

    def fitted_shape(self) -> ModelShape:
        if self.shape is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit() or load()")
        return self.shape

    def fitted_weights(self) -> str:
        """The weights fingerprint of the model this steerer was fitted on."""
        if self.weights_fingerprint is None:
            raise RuntimeError(
                f"{type(self).__name__} has no weights fingerprint: call fit() or load(), or "
                "take a fitted state with adopt() instead of assigning it"
            )
        return self.weights_fingerprint

    def check_fingerprint(self, model: nn.Module) -> None:
        """Refuse a model whose architecture, sizes or weights differ from the fitted one.

        Raises:
            FingerprintMismatch: the architecture or a size differs.
            WeightsMismatch: same shape, other weights (`weights_fingerprint`), and these
                weights were not accepted with `Steerer.load(..., allow_other_weights=True)`.
        """
        self._check_shape(model)
        fitted = self.fitted_weights()
        given = weights_fingerprint(model)
        if given != fitted and given not in self.accepted_weights:
            also = (
                f", also accepting {sorted(self.accepted_weights)}" if self.accepted_weights else ""
            )
            raise WeightsMismatch(
                f"this {self.method} steerer was fitted on {self.model_id!r} (weights "
                f"fingerprint {fitted}{also}), but the given model {_model_id(model)!r} has "
                f"the same shape and other weights (fingerprint {given}), e.g. a fine-tuned or "
                "chat variant; refit it on this model, or, if you know the weights are "
                "equivalent, load it with Steerer.load(directory, model, "
                "allow_other_weights=True)"
            )

    def accept_weights(self, model: nn.Module) -> Self:
        """Accept `model`'s weights from now on (same shape still required); returns self.

        For weights known to be equivalent to the fitted ones; the fitted fingerprint stays
        recorded and `accepted_weights` is rebound, never mutated, so a `copy.copy` of a
        steerer can accept a model without the original doing so.
        """
        self._check_shape(model)
        given = weights_fingerprint(model)
        if given != self.fitted_weights():
            self.accepted_weights = {*self.accepted_weights, given}
        return self

    def _check_shape(self, model: nn.Module) -> None:
        expected = self.fitted_shape()
        actual = model_shape(model)
        if actual != expected:
            diff = {
                k: (v, actual.as_dict()[k])
                for k, v in expected.as_dict().items()
                if actual.as_dict()[k] != v
            }
            raise FingerprintMismatch(
                f"this {self.method} steerer was fitted on {self.model_id!r} and does not fit "
                f"this model: (fitted, given) = {diff}; refit it on this model"
            )

    @contextmanager
    def apply(self, model: nn.Module) -> Iterator[SteeringHandle]:
        """Steer `model` while the block runs.

        Side effects: registers forward hooks on `model`; exactly those are removed on exit,
        also when the block raises.

        Example:
            >>> with steerer.apply(model):
            ...     logits = model(**tokenizer(["Q: ..."], return_tensors="pt")).logits
        """
        self.check_fingerprint(model)
        handle = SteeringHandle()
        cells: list[tuple[Tensor, Tensor] | None] = [None]
        base = getattr(model, "base_model", model)
        state = {"busy": False}

        appended: list[int | None] = [None]  # original length while a rewritten forward runs

        def before_forward(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Inputs | None:
            if state["busy"]:  # a method's own inner pass (faithful SADI) runs unsteered
                return None
            appended[0] = None
            kind = forward_kind(args, kwargs)
            batch, length = kind.batch, kind.length
            if handle.continues_prefix:  # the sweep engine: rows start at the last prompt token
                suffix = handle.layout
                assert suffix is not None
                if (suffix.batch_size, suffix.padded_length) != (batch, length):
                    raise ValueError(
                        f"the suffix layout is for {(suffix.batch_size, suffix.padded_length)} "
                        f"but the forward got {(batch, length)}"
                    )
                cells[0] = suffix.indices(self.edit_policy)
                self._use_clean(handle.clean)
                return None
            if kind.decoding:
                if self.edit_generated:
                    rows = torch.arange(batch).repeat_interleave(length)
                    cells[0] = (rows, torch.arange(length).repeat(batch))
                else:
                    cells[0] = None
                return None
            layout = handle.layout
            if layout is None:  # a prompt (or a generation's prefill): the whole row is prompt
                mask = kwargs.get("attention_mask")
                if mask is None or mask.dim() != 2:
                    mask = torch.ones(batch, length, dtype=torch.long)
                layout = BatchLayout.from_attention_mask(mask.cpu())
            if (layout.batch_size, layout.padded_length) != (batch, length):
                raise ValueError(
                    f"the layout set on the steering handle is for a batch of "
                    f"{(layout.batch_size, layout.padded_length)} but the forward got "
                    f"{(batch, length)}; call handle.set_layout() for each batch"
                )
            # The same policy serves scoring rows and a generation's prefill: a method that
            # steers generated tokens uses "response" (the last prompt token, whose output
            # predicts the first answer token, and every continuation token), so scoring a
            # continuation edits exactly the cells generating it token by token does.
            cells[0] = layout.indices(self.edit_policy)
            state["busy"] = True
            try:
                rewritten = self._before_full_forward(model, args, kwargs, layout)
            finally:
                state["busy"] = False
            appended[0] = None if rewritten is None else length
            return rewritten

        def after_forward(output: Any) -> Any:
            length, appended[0] = appended[0], None
            return None if length is None else drop_shadow(output, length)

        def make_hook(fn: EditFn) -> Callable[[int, Tensor], Tensor | None]:
            def hook(layer: int, act: Tensor) -> Tensor | None:
                where = cells[0]
                if state["busy"] or where is None or where[0].numel() == 0:
                    return None
                rows, pos = where
                return fn(layer, act, rows.to(act.device), pos.to(act.device))

            return hook

        hooks = [LayerHook(layer, make_hook(fn)) for layer, fn in self._edit_fns(model).items()]
        hook_site = model_site(model, self.component)
        with ExitStack() as stack:
            stack.enter_context(observe_forward(base, before_forward, after_forward))
            stack.enter_context(hooked(model, hook_site, hooks))
            yield handle

    # ----- fit cache ---------------------------------------------------------------------
    def fit_key(self, model: nn.Module, pairs: Sequence[Pair]) -> dict[str, Any]:
        """Everything that determines the fitted state: method, component, fit parameters,
        model identity, shape and weights fingerprint, and the exact pairs (so task, split,
        seed and data)."""
        params = {k: v for k, v in self.params().items() if k not in self.apply_params}
        return {
            "method": self.method,
            "component": self.component,
            "params": params,
            "model": str(getattr(model.config, "name_or_path", "")),
            "dtype": str(next(model.parameters()).dtype),
            "fingerprint": model_shape(model).as_dict(),
            "weights_fingerprint": weights_fingerprint(model),
            "pairs": [[p.prompt, p.positive, p.negative, p.item_id] for p in pairs],
        }

    def adopt(self, fitted: Steerer) -> Self:
        """Take the fitted state of `fitted` (same method and fit parameters; its apply
        parameters may differ, e.g. a cached fit of another k); returns self."""
        if type(fitted) is not type(self) or fitted.component != self.component:
            raise ValueError(f"cannot adopt a {fitted.method}/{fitted.component} state")
        mine, theirs = self.params(), fitted.params()
        changes = {p: mine[p] for p in self.apply_params if p in mine and mine[p] != theirs.get(p)}
        if changes:  # e.g. SADI's mask re-selected for this k
            fitted = fitted.with_params(**changes)
        self._copy_identity(fitted)  # first: `_load_tensors` checks against the fingerprint
        self._load_tensors(fitted.tensors())
        return self

    # ----- artifacts -------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        import transformers

        import sadi

        return {
            "method": self.method,
            "component": self.component,
            **self.params(),
            "model_id": self.model_id,
            "fingerprint": self.fitted_shape().as_dict(),
            "weights_fingerprint": self.fitted_weights(),
            "accepted_weights": sorted(self.accepted_weights),
            "n_pairs": self.n_pairs,
            **self.extra_metadata(),
            "versions": {
                "sadi": sadi.__version__,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "python": platform.python_version(),
            },
        }

    def save(self, directory: str | Path) -> Path:
        """Write `steerer.safetensors` and `steerer.json` into `directory`; returns it."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().clone() for k, v in self.tensors().items()}
        save_file(tensors, str(out / TENSORS_FILE))
        (out / META_FILE).write_text(json.dumps(self.metadata(), indent=2) + "\n")
        self.write_extras(out)
        return out

    def check_files(self) -> None:
        """Check what this steerer will read from disk (e.g. SAS's SAE directory), before
        any model loads; raises ValueError naming the file and the fix. Most read nothing."""

    def use_paths(self, cache_dir: str | Path, data_dir: str | Path | None) -> None:
        """Take the run's cache and data directories (SAS trains its SAE there when asked);
        most methods need neither."""

    def write_extras(self, directory: Path) -> None:
        """Write readable, derived files beside the artifact (e.g. SAS's top features);
        `load` never reads them."""

    @classmethod
    def load(
        cls,
        directory: str | Path,
        model: nn.Module | None = None,
        *,
        allow_other_weights: bool = False,
    ) -> Steerer:
        """Read a saved steerer (safetensors + json, never pickle); check it against `model`.

        Called on `Steerer` it dispatches on the saved `method`.

        Args:
            directory: the directory written by `save()`.
            model: when given, the steerer is checked against it (shape and weights).
            allow_other_weights: accept `model` although its weights fingerprint differs from
                the one fitted on (same shape still required): for weights you know to be
                equivalent. The loaded steerer then accepts `model` in `apply` too; the
                fitted fingerprint stays recorded.

        Raises:
            FileNotFoundError: `directory` holds no steerer.json.
            ArtifactError: a file is damaged or inconsistent (the message names it and why).
            FingerprintMismatch: `model` has another architecture or size.
            WeightsMismatch: `model` has other weights and `allow_other_weights` is False.

        Example:
            >>> steerer = Steerer.load("runs/x/steerer", model)
        """
        src = Path(directory)
        meta_path, tensors_path = src / META_FILE, src / TENSORS_FILE
        if not meta_path.exists():
            raise FileNotFoundError(
                f"no {META_FILE} in {src}; pass the directory written by Steerer.save()"
            )
        obj = cls._from_metadata(meta_path)
        tensors = read_tensors(src)
        try:
            obj._load_tensors(tensors)
        except ValueError as err:
            raise ArtifactError(f"{tensors_path}: {err}") from err
        if model is not None:
            if allow_other_weights:
                obj.accept_weights(model)
            obj.check_fingerprint(model)
        return obj

    @classmethod
    def _from_metadata(cls, meta_path: Path) -> Steerer:
        """A steerer with hyperparameters and model record from `meta_path`, no state yet."""
        from sadi.steerers import STEERERS

        def fail(what: str) -> ArtifactError:
            return ArtifactError(f"{meta_path}: {what}")

        meta = read_metadata(meta_path, list(STEERERS))
        method = meta["method"]
        klass = STEERERS[method]
        if cls is not Steerer and klass is not cls:
            raise fail(
                f"holds a {method!r} steerer, not {cls.method!r}; load it with "
                f"Steerer.load or {klass.__name__}.load"
            )
        names = klass.param_names()
        try:
            obj = klass(**{k: meta[k] for k in names if k in meta})
        except (ValueError, TypeError) as err:
            raise fail(str(err)) from err
        missing = [k for k in ("component", *obj.params()) if k not in meta]
        if missing:
            raise fail(
                f"no value for the hyperparameters {missing} (a {method} steerer records "
                f"{['component', *obj.params()]}); re-save the fitted steerer with this "
                "version, or refit it"
            )
        try:
            obj.shape = ModelShape.from_dict(meta["fingerprint"])
        except ValueError as err:
            raise fail(f"bad 'fingerprint': {err}") from err
        obj.weights_fingerprint = check_weights_value(
            "weights_fingerprint", meta["weights_fingerprint"], fail
        )
        accepted = meta.get("accepted_weights", [])
        if not isinstance(accepted, list):
            raise fail(f"'accepted_weights' must be a list of fingerprints, got {accepted!r}")
        obj.accepted_weights = {check_weights_value("accepted_weights", a, fail) for a in accepted}
        obj.model_id = meta.get("model_id")
        n_pairs = meta.get("n_pairs", 0)
        if isinstance(n_pairs, bool) or not isinstance(n_pairs, int) or n_pairs < 0:
            raise fail(f"'n_pairs' must be a non-negative integer, got {n_pairs!r}")
        obj.n_pairs = n_pairs
        try:
            obj._read_extra_metadata(meta)
        except ValueError as err:
            raise fail(str(err)) from err
        return obj

    def extra_metadata(self) -> dict[str, Any]:
        """Fitted, non-tensor state a method records in steerer.json beside its parameters
        (e.g. SAS's SAE config); read back by `_read_extra_metadata` before the tensors."""
        return {}

    def _read_extra_metadata(self, meta: dict[str, Any]) -> None:
        """Take what `extra_metadata` wrote; raises ValueError naming what is wrong."""

    @classmethod
    def param_names(cls) -> list[str]:
        import inspect

        return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self",)]
