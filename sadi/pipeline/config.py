# ruff: noqa: UP045  (OmegaConf schemas need typing.Optional, not X | None)
"""Structured-config schemas: YAML files in conf/ extend these, so a typo or a wrong type
fails when the config is composed, not mid-run."""

from __future__ import annotations

import inspect
import os
import secrets
import typing
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from sadi.infra.cache import digest
from sadi.steerers.base import Steerer
from sadi.steerers.registry import class_path, methods

# OmegaConf needs typing.Optional rather than `X | None` in schemas (Python 3.10 support).


@dataclass
class VLLMSchema:
    """`model.backend=vllm`'s engine (`sadi.vllm.engine.VLLMSettings`)."""

    max_model_len: int = 2048  # the longest sequence (prompt + generated tokens)
    kv_cache_mb: int = 1024  # KV-cache memory (vLLM otherwise takes 92% of the device's)
    tolerance: float = 1e-3  # the self-test's largest |log-prob - HF's|
    allow_untested: bool = False  # a vLLM version sadi was not tested on (self-test only)
    tensor_parallel_size: int = 1
    max_num_seqs: int = 64


@dataclass
class ModelSchema:
    name: str = MISSING
    source: str = MISSING  # embedded:<name>, a local path or a hub id
    dtype: str = "float32"
    device: Optional[str] = None  # None: CUDA when present, else CPU
    # shard over devices with accelerate instead (device must stay null): auto, balanced,
    # balanced_low_0, sequential, or {module name: cuda:N | cpu | disk}
    device_map: Any = None
    offload_folder: Optional[str] = None  # where a device_map's "disk" modules are kept
    batch_size: Any = 16  # int or "auto"
    # tokens per scored row: null = the model's context; longer rows keep their last tokens
    max_length: Optional[int] = None
    # the most tokens (rows x padded length) one scoring forward holds: a batch of long rows
    # is scored in parts, so one long item cannot take the machine's memory
    batch_tokens: int = 8192
    # hf: hooks on the HF model; vllm: the same edits inside vLLM (make setup-vllm)
    backend: str = "hf"
    vllm: VLLMSchema = field(default_factory=VLLMSchema)


@dataclass
class TaskSchema:
    name: str = MISSING
    format: str = "lm_eval"  # lm_eval | ab
    n_pairs: int = 150
    limit: Optional[int] = None  # items per scored split (select, report), never fit
    path: Optional[str] = None  # the generic `jsonl` task's file or folder
    # acc | p_label | mc2: what optimized_metric reads on the select split (p_label: the
    # labelled choice's normalised probability, the CAA behaviours' metric)
    primary_metric: str = "acc"
    chat_template: bool = False  # render prompts in the model's chat template (CAA)
    open_ended: bool = False  # also generate on the CAA open-ended test set
    max_gen_toks: int = 64
    splits: list[str] = field(default_factory=lambda: ["select", "report"])


@dataclass
class PromptSchema:
    """A prompting arm (`sadi.data.prompts`), composable with any intervention."""

    name: str = "none"  # none | instruction | few_shot
    k: int = 0  # few_shot: solved examples from the fit split
    seed: int = 0  # few_shot: which examples are drawn
    instruction_file: Optional[str] = None  # instruction: null = conf/task/instructions/<task>


@dataclass
class ComponentSchema:
    name: str = MISSING  # head | neuron | neuron_down | hidden | residual


@dataclass
class InterventionSchema:
    _target_: Optional[str] = None  # None: no steering (baseline only)
    name: str = "none"


@dataclass
class JudgeSchema:
    """The judge of open-ended generations (`sadi.judge`): none, or any OpenAI-compatible
    endpoint. The API key is read from the environment variable `api_key_env` names, never
    from a config file."""

    name: str = "none"  # none | openai
    base_url: Optional[str] = None  # e.g. http://127.0.0.1:8000/v1
    model: Optional[str] = None
    api_key_env: Optional[str] = None  # e.g. OPENAI_API_KEY; null: the endpoint needs none
    rubric: str = "caa"  # caa (0-10 behaviour) | axbench (concept, instruction, fluency 0-2)
    max_concurrency: int = 4
    timeout_s: float = 60.0
    retries: int = 4
    backoff_s: float = 1.0
    max_tokens: int = 16


@dataclass
class LoggerSchema:
    name: str = "none"  # none | wandb
    project: str = "sadi"
    mode: str = "offline"  # the WANDB_MODE environment variable wins when set
    group: Optional[str] = None
    entity: Optional[str] = None
    # a tracker failure is always reported and never loses results.json; strict: it also
    # fails the run (exit 2), after the results are written
    strict: bool = False


@dataclass
class PathsSchema:
    data_dir: Optional[str] = None  # None: $SADI_DATA_DIR, else shared/data beside the repo
    cache_dir: Optional[str] = None  # None: $SADI_CACHE_DIR, else $XDG_CACHE_HOME/sadi
    output_dir: str = MISSING


@dataclass
class SideEffectsSchema:
    """Other tasks scored with and without the run's steerer (the capability cost of
    steering, e.g. MMLU under a behaviour vector); never fit on, never selected on."""

    tasks: list[str] = field(default_factory=list)  # e.g. [mmlu]
    split: str = "report"
    limit: Optional[int] = 500  # items of that split (a fixed subset: the first `limit`)


@dataclass
class SweepSchema:
    """How log-likelihoods are scored (`sadi.sweep`): the engine shares each context's
    unsteered prefix across choices, the baseline and a sweep's points of one fit."""

    engine: Any = "auto"  # auto: sweep points (-m) use it; true: every run; false: never
    batch_size: Any = "auto"  # heads per prefix forward, rows per suffix forward, or "auto"
    # bounds on a chunk's KV cache (and a suffix forward's copy) and on a suffix forward's
    # logits, in MB; auto: from the GPU's free memory on CUDA, 256 and 128 on the CPU
    cache_mb: Any = "auto"
    logits_mb: Any = "auto"
    # a chunk's contexts that all begin with this many tokens or more (an instruction, a
    # few-shot prompt, a chat template) run that beginning once; 0: never
    shared_min: int = 8


@dataclass
class RunSchema:
    model: ModelSchema = MISSING
    task: TaskSchema = MISSING
    component: ComponentSchema = MISSING
    prompt: PromptSchema = field(default_factory=PromptSchema)
    judge: JudgeSchema = field(default_factory=JudgeSchema)
    # any method: each YAML brings its typed schema (base_<method>) or, for a method of the
    # user's own outside the registry, just its values (checked before the model loads)
    intervention: Any = MISSING
    logger: LoggerSchema = MISSING
    paths: PathsSchema = field(default_factory=PathsSchema)
    side_effects: SideEffectsSchema = field(default_factory=SideEffectsSchema)
    sweep: SweepSchema = field(default_factory=SweepSchema)
    seed: int = 0
    progress: bool = True
    verbose: bool = False  # true: lm-eval, datasets, transformers and W&B log as they do
    sweep_name: str = "default"  # names the sweep directory and the W&B group
    # the metric a sweep optimises: always on the select split
    optimized_metric: str = "select/${task.primary_metric}"


def run_id() -> str:
    """A token no other run gets: pid and random bits (two runs started in the same second,
    on one machine or on two sharing a file system, never share a run directory)."""
    return f"{os.getpid()}-{secrets.token_hex(3)}"


def inputs_tag(*values: Any) -> str:
    """A short digest of the values that change results but stay out of a sweep point's
    directory name (model.source, task.path, paths.data_dir: paths, not names)."""
    return "in-" + digest([None if v is None else str(v) for v in values])[:8]


# a file name may hold 255 bytes: a point's overrides longer than this are cut and the cut
# named by a digest of the whole (still one directory per point, the same on every rerun)
POINT_DIR_BYTES = 200


def point_dir(override_dirname: str, *values: Any) -> str:
    """A sweep point's subdirectory: its overrides, then the inputs tag (overrides too long
    for a file name: their first part and a digest of them all)."""
    tag = inputs_tag(*values)
    name = override_dirname
    if len(name.encode()) > POINT_DIR_BYTES:
        cut = name.encode()[: POINT_DIR_BYTES - 20].decode(errors="ignore")
        name = f"{cut}...{digest(override_dirname)[:12]}"
    return f"{name},{tag}" if name else tag


def sqlite_url(directory: str) -> str:
    """`sqlite:///<directory>/optuna.db`, the directory created (the Optuna sweeper opens
    its storage before Hydra creates the sweep directory)."""
    path = Path(directory).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'optuna.db'}"


def register_resolvers() -> None:
    for name, fn, cache in (
        ("sadi_run_id", run_id, True),  # cached: one value per process, as hydra's `now`
        ("sadi_point_dir", point_dir, False),
        ("sadi_sqlite", sqlite_url, False),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=cache)


# constructor arguments that the run sets, not the intervention config
_SET_BY_RUN = ("self", "component", "progress")


def _omegaconf_type(hint: Any) -> Any:
    """The structured-config type of a constructor annotation: int, float, bool and str as
    they are (Literal choices as str), `X | None` as Optional[X], anything else Any."""
    if hint in (int, float, bool, str):
        return hint
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return str
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        inner = _omegaconf_type(rest[0]) if len(rest) == 1 else Any
        return Any if inner is Any else Optional[inner]
    return Any


def intervention_schema(cls: type[Steerer[Any]]) -> type:
    """The structured-config schema of a steering method, generated from its constructor:
    every argument the config sets, with the constructor's type and default, plus
    `_target_` (the class) and `name` (its spec's). A typo or a wrong type in an
    `intervention.*` override fails when the config is composed."""
    hints = typing.get_type_hints(cls.__init__)
    items: list[tuple[str, Any, Any]] = [
        ("_target_", Optional[str], field(default=class_path(cls))),
        ("name", str, field(default=cls.spec.name)),
    ]
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if name in _SET_BY_RUN:
            continue
        default = MISSING if p.default is inspect.Parameter.empty else p.default
        items.append((name, _omegaconf_type(hints.get(name, Any)), field(default=default)))
    return make_dataclass(f"{cls.__name__}Schema", items, bases=(InterventionSchema,))


def register_configs() -> None:
    """The schemas of every config group in Hydra's ConfigStore: `base_<method>` for every
    registered steering method, generated from its constructor."""
    register_resolvers()
    cs = ConfigStore.instance()
    cs.store(name="base_run", node=RunSchema)
    cs.store(group="model", name="base_model", node=ModelSchema)
    cs.store(group="task", name="base_task", node=TaskSchema)
    cs.store(group="component", name="base_component", node=ComponentSchema)
    cs.store(group="prompt", name="base_prompt", node=PromptSchema)
    cs.store(group="intervention", name="base_none", node=InterventionSchema)
    for name, cls in methods().items():
        cs.store(group="intervention", name=f"base_{name}", node=intervention_schema(cls))
    cs.store(group="logger", name="base_logger", node=LoggerSchema)
    cs.store(group="judge", name="base_judge", node=JudgeSchema)
