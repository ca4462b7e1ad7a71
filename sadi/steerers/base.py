"""The contract every steering method follows: fit, apply (a context manager), save, load.

A method is one module with one subclass of `Steerer[State]`. It declares itself once, in
`spec` (`sadi.steerers.spec.MethodSpec`), which also registers it; it takes its
hyperparameters in `__init__` (checked there, kept as attributes of the same names) and
implements:

- `fit(model, tokenizer, pairs)`: compute the fitted state, a dataclass of tensors, into
  `self.state` (after `self._remember_model(model, len(pairs))`);
- `_edit_fns(model)`: one edit function per edited layer (`sadi.steerers.session.EditFn`);
- `selected_layers()`: the layers it edits;
- `_check_state(state)`: refuse a loaded state that does not fit the recorded model or
  the hyperparameters.

Everything else is shared: `params()` (the constructor's arguments), `apply` (hook lifetime:
`sadi.steerers.session`), `with_params` (another point of one fit), the fit cache key,
save / load (`sadi.steerers.artifacts`), the model checks (`sadi.steerers.identity`).
Where a method edits (`edit_policy`, `edit_generated`) is a per-instance setting; the sweep
engine reads the prefix protocol (`prefix_unshared`, `clean_layers`, `use_clean`).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from torch import Tensor, nn
from transformers.tokenization_utils_base import PreTrainedTokenizerBase
from typing_extensions import Self

from sadi.core.architectures import ModelShape, check_component, model_shape
from sadi.core.fingerprints import weights_fingerprint
from sadi.core.hooks import Inputs
from sadi.core.models import model_id
from sadi.core.positions import SUFFIX_POLICIES, BatchLayout, PositionPolicy
from sadi.data.pairs import Pair
from sadi.infra import checks
from sadi.steerers import artifacts, registry
from sadi.steerers.identity import FingerprintMismatch, ModelRecord, WeightsMismatch
from sadi.steerers.session import EditFn, HookSession, SteeringHandle
from sadi.steerers.spec import MethodSpec

StateT = TypeVar("StateT")
# constructor arguments that say how to run, not what to compute: never in params()
RUNTIME_ARGS = ("component", "batch_size", "progress")


def check_finite(name: str, value: float) -> float:
    return checks.finite(name, value)


def check_pairs(pairs: Sequence[Pair], minimum: int = 1) -> None:
    """Reject too few pairs and pairs whose positive equals their negative."""
    if len(pairs) < minimum:
        raise ValueError(
            f"got {len(pairs)} contrastive pair(s), need at least {minimum}; build them with "
            "sadi.data.pairs.make_pairs from the task's fit split (task.n_pairs)"
            if pairs
            else "no contrastive pairs given; build them with sadi.data.pairs.make_pairs from "
            "the task's fit split (n_pairs > 0)"
        )
    for i, p in enumerate(pairs):
        if p.positive == p.negative:
            raise ValueError(
                f"pair {i} (item {p.item_id!r}) has positive == negative == {p.positive!r}; "
                "a contrastive pair needs two different completions"
            )


class Steerer(ABC, Generic[StateT]):
    """Base class of all steering methods (see the module docstring)."""

    spec: ClassVar[MethodSpec]
    method: ClassVar[str]  # spec.name
    apply_params: ClassVar[tuple[str, ...]]  # spec.apply_params
    # a constructor argument kept under another attribute name (SAS: sae -> sae_source)
    param_attributes: ClassVar[dict[str, str]] = {}
    edit_policy: PositionPolicy = "last_prompt"
    edit_generated: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "spec" in cls.__dict__:
            cls.method, cls.apply_params = cls.spec.name, cls.spec.apply_params
            registry.register(cls)

    def __init__(self, component: str, batch_size: int = 16, progress: bool | str = True) -> None:
        check_component(component)
        if component not in self.spec.components:
            raise ValueError(
                f"{type(self).__name__} steers {list(self.spec.components)}, got "
                f"component={component!r}; set component={self.spec.default_component}"
            )
        self.component = component
        self.batch_size = checks.positive_int("batch_size", batch_size)
        self.progress = checks.boolean("progress", progress)
        self.record: ModelRecord | None = None
        self.state: StateT | None = None

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

    def _check_state(self, state: StateT) -> StateT:
        """The loaded `state`, checked against the recorded model (`self.shape`, when set)
        and the hyperparameters; raises ValueError naming what does not fit."""
        return state

    def _share_fit(self, source: Self) -> None:
        """`with_params`' and `adopt`'s hook: take what else the fit carries besides its
        tensors (e.g. CAA's consistency) and check the new values against the recorded model
        (e.g. a layer in range)."""

    def _before_full_forward(
        self, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], layout: BatchLayout
    ) -> Inputs | None:
        """Called before every non-decoding forward under `apply` (e.g. for a clean pass).

        May return replacement base-model inputs that append positions after the padded
        rows (faithful SADI's shadow, see `sadi.core.shadow`); `apply` cuts those positions
        off the base model's output again, so callers see the sequence length they passed.
        """
        return None

    def check_files(self) -> None:
        """Check what this steerer will read from disk (e.g. SAS's SAE directory), before
        any model loads; raises ValueError naming the file and the fix. Most read nothing."""

    def use_paths(self, cache_dir: str | Path, data_dir: str | Path | None) -> None:
        """Take the run's cache and data directories (SAS trains its SAE there when asked);
        most methods need neither."""

    # ----- the prefix protocol of the sweep engine (`sadi.sweep.protocol`) ----------
    def prefix_unshared(self) -> str | None:
        """Why this steerer cannot score on a shared unsteered prefix (its edits reach
        positions before the last prompt token), or None when it can."""
        if self.edit_policy in SUFFIX_POLICIES:
            return None
        return (
            f"{self.method} edits positions={self.edit_policy!r} (before the last prompt "
            "token), so no prefix is the same as the unsteered model's"
        )

    def residual_additions(self) -> dict[int, Tensor] | None:
        """Per decoder layer, the vector this steerer adds to the layer's output (the residual
        stream) at every cell it edits, when adding it is all the steerer does (CAA, SAS in
        decoder mode); None for any other edit. What a llama.cpp control vector can hold
        (`sadi.llamacpp`)."""
        return None

    def reads_clean(self) -> bool:
        """Whether the edit reads the unsteered activations of the same batch (a second,
        clean pass: faithful SADI); known before fitting (a serving engine refuses it)."""
        return False

    def clean_layers(self) -> list[int]:
        """Layers at which the edit reads the unsteered activation of the last prompt token
        (faithful SADI); the sweep engine takes them from its cached prefix pass."""
        return []

    def use_clean(self, clean: dict[int, Tensor]) -> None:
        """Take the unsteered last-prompt-token activations of `clean_layers` for the
        following forward (the sweep engine's suffix forwards)."""

    # ----- hyperparameters and state ------------------------------------------------
    @classmethod
    def param_names(cls) -> list[str]:
        """The constructor's arguments, in order."""
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    def params(self) -> dict[str, Any]:
        """Hyperparameters (the constructor's arguments but the runtime ones), JSON-ready."""
        names = [n for n in self.param_names() if n not in RUNTIME_ARGS]
        return {n: getattr(self, self.param_attributes.get(n, n)) for n in names}

    def fitted_state(self) -> StateT:
        if self.state is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit() or load()")
        return self.state

    def tensors(self) -> dict[str, Tensor]:
        """The fitted state as named tensors (the fields of the state dataclass)."""
        state = self.fitted_state()
        assert is_dataclass(state)
        return {f.name: getattr(state, f.name) for f in fields(state)}

    def _load_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Restore the fitted state from `tensors()` output, checked (`_check_state`)."""
        state_type = self._state_type()
        names = [f.name for f in fields(state_type)]
        artifacts.check_tensor_names(self.method, tensors, names)
        self.state = self._check_state(state_type(**{n: tensors[n] for n in names}))

    @classmethod
    def _state_type(cls) -> Any:
        for base in getattr(cls, "__orig_bases__", ()):
            args = getattr(base, "__args__", ())
            if args and is_dataclass(args[0]):
                return args[0]
        raise TypeError(f"{cls.__name__} must subclass Steerer[<a dataclass of tensors>]")

    # ----- the fitted model ---------------------------------------------------------
    def _remember_model(self, model: nn.Module, n_pairs: int) -> ModelShape:
        self.record = ModelRecord.of(model, n_pairs)
        return self.record.shape

    @property
    def shape(self) -> ModelShape | None:
        return None if self.record is None else self.record.shape

    @property
    def weights_fingerprint(self) -> str | None:
        return None if self.record is None else self.record.weights

    @property
    def accepted_weights(self) -> frozenset[str]:
        return frozenset() if self.record is None else self.record.accepted

    @property
    def n_pairs(self) -> int:
        return 0 if self.record is None else self.record.n_pairs

    def fitted_record(self) -> ModelRecord:
        if self.record is None:
            raise RuntimeError(
                f"{type(self).__name__} is not fitted: call fit() or load() (it has no model "
                "record, no weights fingerprint: take a fitted state with adopt() instead of "
                "assigning it)"
            )
        return self.record

    def fitted_shape(self) -> ModelShape:
        return self.fitted_record().shape

    def fitted_weights(self) -> str:
        """The weights fingerprint of the model this steerer was fitted on."""
        return self.fitted_record().weights

    def check_fingerprint(self, model: nn.Module) -> None:
        """Refuse a model whose architecture, sizes or weights differ from the fitted one
        (`FingerprintMismatch`, `WeightsMismatch`)."""
        self.fitted_record().check(model, self.method)

    def accept_weights(self, model: nn.Module) -> Self:
        """Accept `model`'s weights from now on (same shape still required); returns self.
        The record is replaced, never mutated: a `copy.copy` of a steerer can accept a model
        without the original doing so."""
        self.record = self.fitted_record().accepting(model, self.method)
        return self

    # ----- apply --------------------------------------------------------------------
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
        with HookSession(self, model).open() as handle:
            yield handle

    # ----- points of one fit --------------------------------------------------------
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
        runtime: dict[str, Any] = {"batch_size": self.batch_size, "progress": self.progress}
        new = type(self)(component=self.component, **{**current, **changes}, **runtime)
        new.record, new.state = self.record, self.state
        new._share_fit(self)
        return new

    def adopt(self, fitted: Steerer[Any]) -> Self:
        """Take the fitted state of `fitted` (same method and fit parameters; its apply
        parameters may differ, e.g. a cached fit of another k); returns self."""
        if type(fitted) is not type(self) or fitted.component != self.component:
            raise ValueError(f"cannot adopt a {fitted.method}/{fitted.component} state")
        mine, theirs = self.params(), fitted.params()
        changes = {p: mine[p] for p in self.apply_params if p in mine and mine[p] != theirs.get(p)}
        if changes:  # e.g. SADI's mask re-selected for this k
            fitted = fitted.with_params(**changes)
        self.record = fitted.record  # first: `_load_tensors` checks against the record
        self._load_tensors(fitted.tensors())
        self._share_fit(fitted)  # what else the fit carries (e.g. CAA's consistency)
        return self

    def fit_key(self, model: nn.Module, pairs: Sequence[Pair]) -> dict[str, Any]:
        """Everything that determines the fitted state: method, component, fit parameters,
        model identity, shape and weights fingerprint, and the exact pairs (so task, split,
        seed and data)."""
        params = {k: v for k, v in self.params().items() if k not in self.apply_params}
        return {
            "method": self.method,
            "component": self.component,
            "params": params,
            "model": model_id(model),
            "dtype": str(next(model.parameters()).dtype),
            "fingerprint": model_shape(model).as_dict(),
            "weights_fingerprint": weights_fingerprint(model),
            "pairs": [[p.prompt, p.positive, p.negative, p.item_id] for p in pairs],
        }

    # ----- artifacts (`sadi.steerers.artifacts`) -------------------------------------
    def metadata(self) -> dict[str, Any]:
        """What steerer.json records (`artifacts.metadata`)."""
        return artifacts.metadata(self)

    def save(self, directory: str | Path) -> Path:
        """Write `steerer.safetensors` and `steerer.json` into `directory`; returns it."""
        return artifacts.save(self, Path(directory))

    @classmethod
    def load(
        cls,
        directory: str | Path,
        model: nn.Module | None = None,
        *,
        allow_other_weights: bool = False,
    ) -> Steerer[Any]:
        """Read a saved steerer (safetensors + json, never pickle); check it against `model`.

        Called on `Steerer` it dispatches on the saved `method`; see `artifacts.load`.

        Raises:
            FileNotFoundError: `directory` holds no steerer.json.
            ArtifactError: a file is damaged or inconsistent (the message names it and why).
            FingerprintMismatch: `model` has another architecture or size.
            WeightsMismatch: `model` has other weights and `allow_other_weights` is False.

        Example:
            >>> steerer = Steerer.load("runs/x/steerer", model)
        """
        return artifacts.load(cls, Path(directory), model, allow_other_weights)

    def extra_metadata(self) -> dict[str, Any]:
        """Fitted, non-tensor state a method records in steerer.json beside its parameters
        (e.g. SAS's SAE config); read back by `_read_extra_metadata` before the tensors."""
        return {}

    def _read_extra_metadata(self, meta: dict[str, Any]) -> None:
        """Take what `extra_metadata` wrote; raises ValueError naming what is wrong."""

    def write_extras(self, directory: Path) -> None:
        """Write readable, derived files beside the artifact (e.g. SAS's top features);
        `load` never reads them."""


__all__ = [
    "EditFn",
    "FingerprintMismatch",
    "RUNTIME_ARGS",
    "Steerer",
    "SteeringHandle",
    "WeightsMismatch",
    "check_finite",
    "check_pairs",
]
