"""Benchmark tasks as data: files, disjoint fit/select/report splits, prompt formats.

Every task has three disjoint splits: ``fit`` (source of contrastive pairs), ``select``
(hyperparameter choice) and ``report`` (the final number, never used for selection).
Where a dataset lacks a split it is carved from one file with a seeded permutation whose
seed is part of the task spec (``split_seed``), so report sets never change with the run seed.

Items follow lm-eval: ``Item.question`` is the whole context and ends without a trailing
space; each of ``Item.choices`` is the continuation appended to it and starts with " ".
The rule at the join: the context's trailing whitespace is removed and each continuation
is ``" " + choice.lstrip()``, so a choice written with a leading space (``" Paris"``) gives
the same continuation as one without (``"Paris"``), never a double space; two choices of
one item that become equal this way are rejected at load.
Two prompt formats:

* ``"lm_eval"``: the task's usual lm-eval harness prompt (deviations in ``TaskSpec.notes``).
* ``"ab"``: lettered options as in the SADI paper: the task stem, then ``"\\n(A) c0\\n(B) c1..."``,
  then ``"\\nAnswer:"``; continuations ``" (A)"``, ``" (B)"``, ...

Data files are read from a data directory (see ``default_data_dir``), never copied, and
every record is checked when the task is loaded, before any model is: UTF-8, non-blank
question and choices, integer labels (see ``validate_record``). ``load_task(limit=...)``
caps the scored splits (select, report) only; the fit split is never capped.
``check_split_names`` checks the splits a run scores (config ``task.splits``).

Modules: ``base`` (the data types), ``data`` (reading and checking files), ``registry``
(one ``TaskSpec`` per task: add a task there), ``load`` (``load_task``).
"""

from sadi.data.tasks.base import (
    FORMATS,
    SPLITS,
    DataFormatError,
    DataNotFoundError,
    Item,
    Metric,
    PromptFormat,
    Record,
    SplitName,
    SplitOverlapError,
    SplitSource,
    Task,
    TaskError,
    TaskSpec,
)
from sadi.data.tasks.data import (
    EXAMPLE_DATA,
    check_disjoint,
    check_split_names,
    default_data_dir,
    read_jsonl,
    validate_record,
)
from sadi.data.tasks.load import LONG_CONTEXT_CHARS, load_task, split_ids
from sadi.data.tasks.registry import JSONL_TASK, TASKS

__all__ = [
    "EXAMPLE_DATA",
    "FORMATS",
    "JSONL_TASK",
    "LONG_CONTEXT_CHARS",
    "SPLITS",
    "TASKS",
    "DataFormatError",
    "DataNotFoundError",
    "Item",
    "Metric",
    "PromptFormat",
    "Record",
    "SplitName",
    "SplitOverlapError",
    "SplitSource",
    "Task",
    "TaskError",
    "TaskSpec",
    "check_disjoint",
    "check_split_names",
    "default_data_dir",
    "load_task",
    "read_jsonl",
    "split_ids",
    "validate_record",
]
