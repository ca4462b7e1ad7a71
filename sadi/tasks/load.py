"""Loading a task: rendering records into items in either prompt format, disjoint splits."""

from __future__ import annotations

import difflib
import random
from pathlib import Path

from sadi.tasks.base import (
    FORMATS,
    SPLITS,
    Item,
    PromptFormat,
    Record,
    SplitName,
    SplitSource,
    Task,
    TaskSpec,
)
from sadi.tasks.data import check_disjoint, default_data_dir, existing_dir, read_jsonl
from sadi.tasks.registry import JSONL_TASK, TASKS, carve


def split_ids(task: Task) -> dict[str, list[str]]:
    """The item ids of each split, in order, for the run record."""
    return {name: [item.id for item in items] for name, items in task.splits.items()}


def _jsonl_spec(path: Path) -> TaskSpec:
    if path.is_dir():  # three ready-made files
        return TaskSpec(
            str(path.resolve()),
            SplitSource("fit.jsonl"),
            SplitSource("select.jsonl"),
            SplitSource("report.jsonl"),
            "{question}",
            "{question}",
            notes="fit/select/report.jsonl from the directory as given.",
        )
    third = len(read_jsonl(path)) // 3
    return TaskSpec(
        str(path.resolve().parent),
        *carve(path.name, third, 2 * third),
        "{question}",
        "{question}",
        notes="One canonical file carved into thirds (report takes the remainder); question "
        "is the context as-is, each choice gets a leading space.",
    )


def _render(spec: TaskSpec, record: Record, fmt: PromptFormat) -> Item:
    r = spec.prepare(record) if spec.prepare else record
    options, lm_options = list(r["choices"]), list(r.get("_lm_choices") or r["choices"])
    label, correct = r["label"], tuple(r.get("_correct", (r["label"],)))
    if spec.shuffle_choices:
        order = list(range(len(options)))
        random.Random(f"{spec.split_seed}:{r['id']}").shuffle(order)
        options, lm_options = [options[i] for i in order], [lm_options[i] for i in order]
        label, correct = order.index(label), tuple(sorted(order.index(i) for i in correct))
        r = {**r, "choices": options}
    if fmt == "lm_eval":
        return Item(
            r["id"], spec.context.format(**r), tuple(" " + c for c in lm_options), label, correct
        )
    if len(options) > 26:
        raise ValueError(
            f"item {r['id']!r} has {len(options)} choices; the ab format has "
            f"letters for at most 26, use format='lm_eval'"
        )
    letters = [f"({chr(ord('A') + i)})" for i in range(len(options))]
    if spec.ab_stem is None:
        context = r["question"] + "\nAnswer:"
    else:
        lines = "".join(f"\n{letter} {o}" for letter, o in zip(letters, options, strict=True))
        context = spec.ab_stem.format(**r) + lines + "\nAnswer:"
    return Item(r["id"], context, tuple(" " + x for x in letters), label, correct)


def load_task(
    name: str,
    *,
    data_dir: str | Path | None = None,
    format: PromptFormat = "lm_eval",
    limit: int | None = None,
    seed: int = 0,
    path: str | Path | None = None,
) -> Task:
    """Load a registered task (or ``"jsonl"`` with ``path=``) with its three splits.

    Args:
        name: A key of ``TASKS`` or ``"jsonl"``.
        data_dir: Folder holding the task folders; default ``default_data_dir()``.
        format: ``"lm_eval"`` (the task's lm-eval prompt) or ``"ab"`` (lettered options).
        limit: Keep at most this many items per split (the first after the seeded order).
        seed: Orders the items within each split; it never changes which items a split holds.
        path: For ``"jsonl"`` only: a canonical JSONL file (carved into thirds) or a folder
            with fit.jsonl, select.jsonl and report.jsonl.

    Returns:
        A ``Task`` whose splits are checked to be disjoint by item id.

    Example:
        >>> task = load_task("copa")  # doctest: +SKIP
        >>> {split: len(items) for split, items in task.splits.items()}  # doctest: +SKIP
        {'fit': 200, 'select': 300, 'report': 500}
    """
    if format not in FORMATS:
        raise ValueError(f"format={format!r} is not one of {list(FORMATS)}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit={limit} must be None (all items) or a positive int")
    if name == JSONL_TASK:
        if path is None:
            raise ValueError(
                "load_task('jsonl') needs path= to a canonical JSONL file "
                "or to a folder with fit.jsonl, select.jsonl and report.jsonl"
            )
        spec, root = _jsonl_spec(Path(path)), Path()
    elif name in TASKS:
        if path is not None:
            raise ValueError(f"path= is only for the 'jsonl' task, not {name!r}")
        spec = TASKS[name]
        root = existing_dir(Path(data_dir), "data_dir=") if data_dir else default_data_dir()
    else:
        known = [*TASKS, JSONL_TASK]
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean {close}?" if close else ""
        raise ValueError(
            f"unknown task {name!r}.{hint} Known tasks: {known}; for your own data "
            f"use load_task('jsonl', path=...)"
        )
    files: dict[str, list[Record]] = {}
    chosen: dict[SplitName, list[Record]] = {}
    for split in SPLITS:
        source: SplitSource = getattr(spec, split)
        if source.file not in files:
            files[source.file] = read_jsonl(root / spec.folder / source.file, validate=True)
        records = list(files[source.file])
        if source.shuffled:
            random.Random(spec.split_seed).shuffle(records)
        chosen[split] = records[source.start : source.stop]
        if not chosen[split]:
            raise ValueError(
                f"task {name!r}: split {split!r} = {source.describe()} is empty "
                f"({len(records)} records in the file); give the task more items"
            )
    check_disjoint({s: [r["id"] for r in rs] for s, rs in chosen.items()}, name)
    splits: dict[SplitName, list[Item]] = {}
    for split, records in chosen.items():
        random.Random(f"{seed}:{split}").shuffle(records)
        splits[split] = [_render(spec, r, format) for r in records[:limit]]
    return Task(name, splits, format, spec.metric, spec)
