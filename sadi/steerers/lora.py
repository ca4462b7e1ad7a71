"""LoRA fine-tuning (Hu et al. 2021) as a baseline arm: low-rank adapters on every linear layer
of the attention blocks (component=head) or the MLP blocks (component=neuron).

Fit: for each target linear map W (out x in), A (rank x in) starts as peft's default
(Kaiming-uniform, a=sqrt(5)) and B (out x rank) at zero; both are trained with AdamW to
predict each fit pair's positive completion after its prompt, the loss on the completion
tokens only (`sadi.steerers.training`). The model's weights never change.

Apply: `W x + scale * (alpha / rank) * B A x` on every position, the prompt, the scored
continuation and every generated token alike (a fine-tuned model is one model everywhere),
as forward hooks removed on exit; `scale` 1 is the trained adapter, 0 the unsteered model.
Because it edits the prompt, the sweep engine runs each point on its own adapted prefix.

The adapter is saved in sadi's artifact (steerer.safetensors) and, beside it, as a peft
adapter (`peft/`: adapter_config.json + adapter_model.safetensors) that
`peft.PeftModel.from_pretrained(model, ".../steerer/peft")` loads; its forward equals
`apply` (tests/steerers/test_lora.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn
from transformers.tokenization_utils_base import PreTrainedTokenizerBase
from typing_extensions import Self

from sadi.core.architectures import architecture_of, decoder_layers, get_module
from sadi.core.models import module_device
from sadi.data.pairs import Pair
from sadi.infra import checks
from sadi.steerers.artifacts import check_finite_tensor
from sadi.steerers.base import EditFn, Steerer, check_pairs
from sadi.steerers.session import SteeringHandle
from sadi.steerers.spec import MethodSpec
from sadi.steerers.training import TrainingParams, train


@dataclass
class LoRAState:
    """Fitted adapters: module name (from the model root) -> (A [rank, in], B [out, rank])."""

    adapters: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)


def _dims(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) of a linear map: nn.Linear, or GPT-2's Conv1D (weight stored [in, out])."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D":
        w = cast(Tensor, module.weight)
        return int(w.shape[0]), int(w.shape[1])
    return None


def target_modules(model: nn.Module, component: str) -> dict[str, nn.Module]:
    """The linear maps LoRA adapts: every one inside each decoder layer's attention block
    (head) or MLP block (neuron), by name from the model root."""
    arch = architecture_of(model)
    block = (arch.attn_out if component == "head" else arch.mlp_down).rsplit(".", 1)[0]
    names = {id(m): n for n, m in model.named_modules()}
    out: dict[str, nn.Module] = {}
    for layer in decoder_layers(model):
        for module in get_module(layer, block).modules():
            if _dims(module) is not None:
                out[names[id(module)]] = module
    if not out:
        raise ValueError(f"no linear layers found in the {component} blocks of this model")
    return out


class LoRA(Steerer[LoRAState]):
    """Low-rank adapters on the attention (head) or MLP (neuron) linear layers.

    Args:
        component: "head" (the attention blocks' linear layers) or "neuron" (the MLP's).
        rank: the adapters' rank r.
        alpha: the scaling numerator (the update is alpha / r * B A x).
        lr: AdamW's learning rate.
        epochs: passes over the fit pairs.
        seed: seeds A's initialisation and the batch order.
        scale: multiplies the trained update at apply time (1 = the fine-tuned model, 0 =
            the unsteered model); a sweep over it shares one fit.
        train_batch_size: pairs per training step (a hyperparameter: it keys the fit).
        batch_size: unused (the common constructor signature of steerers).
        progress: show a progress bar while training.

    Example:
        >>> lora = LoRA("head", rank=8, epochs=2).fit(model, tokenizer, pairs)
        >>> with lora.apply(model):
        ...     out = model.generate(**tokenizer(prompts, return_tensors="pt"))
    """

    spec = MethodSpec(
        name="lora",
        strength="scale",
        identity=0.0,
        size="rank",
        axes=("rank", "scale"),
        apply_params=("scale",),
        components=("head", "neuron"),
        default_component="head",
    )
    edit_policy = "all"
    edit_generated = True

    def __init__(
        self,
        component: str = "head",
        rank: int = 8,
        alpha: int = 16,
        lr: float = 1e-3,
        epochs: int = 3,
        seed: int = 0,
        scale: float = 1.0,
        train_batch_size: int = 8,
        batch_size: int = 16,
        progress: bool = True,
    ) -> None:
        super().__init__(component, batch_size, progress)
        self.rank = checks.positive_int("rank", rank, example="intervention.rank=8")
        self.alpha = checks.positive_int("alpha", alpha, example="intervention.alpha=16")
        self.training = TrainingParams.checked(lr, epochs, seed, train_batch_size)
        self.lr, self.epochs, self.seed = self.training.lr, self.training.epochs, self.training.seed
        self.train_batch_size = self.training.batch_size
        self.scale = checks.finite("scale", scale)
        self.losses: list[float] = []  # the last fit's mean loss per epoch
        self.fan_in_fan_out = False  # the adapted maps store weights [in, out] (GPT-2)

    def _share_fit(self, source: LoRA) -> None:
        self.fan_in_fan_out, self.losses = source.fan_in_fan_out, list(source.losses)

    # ----- fit -----------------------------------------------------------------------
    def fit(
        self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, pairs: Sequence[Pair]
    ) -> Self:
        """Train the adapters on the pairs' positive completions (deterministic)."""
        check_pairs(pairs)
        self._remember_model(model, len(pairs))
        generator = torch.Generator().manual_seed(self.seed)
        adapters: dict[str, tuple[Tensor, Tensor]] = {}
        targets = target_modules(model, self.component)
        self.fan_in_fan_out = any(not isinstance(m, nn.Linear) for m in targets.values())
        for name, module in targets.items():
            d_in, d_out = _dims(module)  # type: ignore[misc]
            a = torch.empty(self.rank, d_in)
            bound = 1.0 / math.sqrt(d_in)  # kaiming_uniform_(a=sqrt(5)), peft's default for A
            a.uniform_(-bound, bound, generator=generator)
            b = torch.zeros(d_out, self.rank)
            device = module_device(module)  # each adapter where its module computes
            adapters[name] = (
                a.to(device).requires_grad_(True),
                b.to(device).requires_grad_(True),
            )
        self.state = LoRAState(adapters)
        params = [t for pair in adapters.values() for t in pair]
        steer = self.with_params(scale=1.0)  # the training forward is the apply at scale 1
        self.losses = train(
            steer,
            model,
            tokenizer,
            pairs,
            params,
            self.training,
            progress=self.progress,
            desc=f"LoRA fit ({self.component})",
        )
        self.state = LoRAState({n: (a.detach(), b.detach()) for n, (a, b) in adapters.items()})
        return self

    # ----- apply ---------------------------------------------------------------------
    def selected_layers(self) -> list[int]:
        n = self.fitted_shape().n_layers
        return list(range(n))

    def _edit_fns(self, model: nn.Module) -> dict[int, EditFn]:
        return {}  # LoRA hooks linear layers, not a component site: see `apply`

    @contextmanager
    def apply(self, model: nn.Module) -> Iterator[SteeringHandle]:
        """Adapt `model` while the block runs (every position); hooks removed on exit."""
        self.check_fingerprint(model)
        state = self.fitted_state()
        modules = dict(model.named_modules())
        missing = sorted(set(state.adapters) - set(modules))
        if missing:
            raise ValueError(f"the model has no module {missing[0]!r} that this LoRA adapts")
        factor = self.scale * self.alpha / self.rank
        with ExitStack() as stack:
            if factor != 0.0:
                for name, (a, b) in state.adapters.items():
                    hook = modules[name].register_forward_hook(_adapter_hook(a, b, factor))
                    stack.callback(hook.remove)
            yield SteeringHandle()

    # ----- artifacts -----------------------------------------------------------------
    def tensors(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for name, (a, b) in self.fitted_state().adapters.items():
            out[f"{name}.lora_A"], out[f"{name}.lora_B"] = a, b
        return out

    def _load_tensors(self, tensors: dict[str, Tensor]) -> None:
        names = sorted({k.rsplit(".", 1)[0] for k in tensors})
        adapters: dict[str, tuple[Tensor, Tensor]] = {}
        for name in names:
            a, b = tensors.get(f"{name}.lora_A"), tensors.get(f"{name}.lora_B")
            if a is None or b is None or len(tensors) != 2 * len(names):
                raise ValueError(f"LoRA tensors of {name!r} must be one lora_A and one lora_B")
            a, b = (
                check_finite_tensor(f"{name}.lora_A", a),
                check_finite_tensor(f"{name}.lora_B", b),
            )
            if a.dim() != 2 or b.dim() != 2 or a.shape[0] != self.rank or b.shape[1] != self.rank:
                raise ValueError(
                    f"LoRA {name!r}: A {tuple(a.shape)} and B {tuple(b.shape)} are not of rank "
                    f"{self.rank}"
                )
            adapters[name] = (a, b)
        if not adapters:
            raise ValueError("a LoRA steerer holds no adapters")
        self.state = LoRAState(adapters)

    def extra_metadata(self) -> dict[str, Any]:
        return {"fan_in_fan_out": self.fan_in_fan_out}

    def _read_extra_metadata(self, meta: dict[str, Any]) -> None:
        self.fan_in_fan_out = checks.boolean("fan_in_fan_out", meta.get("fan_in_fan_out", False))

    def write_extras(self, directory: Path) -> None:
        """The adapter as peft saves it (`peft/`: adapter_config.json and
        adapter_model.safetensors), for `peft.PeftModel.from_pretrained(model, that dir)`."""
        from peft import LoraConfig
        from safetensors.torch import save_file

        out = directory / "peft"
        out.mkdir(parents=True, exist_ok=True)
        adapters = self.fitted_state().adapters
        LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=0.0,
            target_modules=sorted(adapters),
            bias="none",
            task_type="CAUSAL_LM",
            fan_in_fan_out=self.fan_in_fan_out,  # GPT-2's Conv1D
            base_model_name_or_path=self.fitted_record().model_id,
        ).save_pretrained(str(out))
        weights = {}
        for name, (a, b) in adapters.items():
            weights[f"base_model.model.{name}.lora_A.weight"] = a.detach().cpu().contiguous()
            weights[f"base_model.model.{name}.lora_B.weight"] = b.detach().cpu().contiguous()
        save_file(weights, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})


def _adapter_hook(a: Tensor, b: Tensor, factor: float) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
        x = args[0]
        delta = (x.to(a.dtype) @ a.to(x.device).T) @ b.to(x.device).T
        return output + (factor * delta).to(output.dtype)

    return hook


__all__ = ["LoRA", "LoRAState", "target_modules"]
