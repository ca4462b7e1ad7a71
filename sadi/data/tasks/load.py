"""Loading a task: rendering records into items in either prompt format, disjoint splits.

Whitespace at the join: the lm_eval context loses its trailing whitespace and every
continuation is ``" " + choice.lstrip()``, so context + continuation holds exactly one space
where they meet, whether or not the data's choices begin with a space (lm-eval scores the
continuation as given: sadi's task config sets ``target_delimiter: ""``). In the ab format
the stem loses its trailing whitespace too and each option line is
``"\\n(A) " + choice.lstrip()``.

Contexts longer than ``LONG_CONTEXT_CHARS`` are kept (never dropped) with one warning per
load: lm-eval keeps the last ``max_length`` tokens of context + continuation when scoring
(left truncation), and fitting raises on a row longer than the model's context.
"""

from __future__ import annotations

import difflib
import logging
import random
import re
from pathlib import Path

from sadi.data.tasks.base import (
    FORMATS,
    SPLITS,
    Item,
    PromptFormat,
    Record,
    SplitName,
    SplitSource,
    Task,
    TaskError,
    TaskSpec,
)
from sadi.data.tasks.data import check_disjoint, default_data_dir, existing_dir, read_jsonl
from sadi.data.tasks.registry import JSONL_TASK, TASKS, carve

log = logging.getLogger(__name__)

# Characters of context above which an item is reported as long (about 500 tokens of
# English); such items are still loaded and scored.
LONG_CONTEXT_CHARS = 2000


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
        "is the context (trailing whitespace removed), each continuation is one space + the "
        "choice without its leading whitespace.",
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
        context = spec.context.format(**r).rstrip()
        return Item(r["id"], context, tuple(" " + c.lstrip() for c in lm_options), label, correct)
    if len(options) > 26:
        raise TaskError(
            f"item {r['id']!r} has {len(options)} choices; the ab format has "
            f"letters for at most 26, use format='lm_eval'"
        )
    letters = [f"({chr(ord('A') + i)})" for i in range(len(options))]
    if spec.ab_stem is None:
        context = r["question"].rstrip() + "\nAnswer:"
    else:
        lines = "".join(
            f"\n{letter} {o.lstrip()}" for letter, o in zip(letters, options, strict=True)
        )
        context = spec.ab_stem.format(**r).rstrip() + lines + "\nAnswer:"
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
        name: A key of ``TASKS``, or with ``path=`` a name for the user's data (``"jsonl"``
            by default in the config; any other name not registered: it names the run's
            files, sweeps and report rows).
        data_dir: Folder holding the task folders; default ``default_data_dir()``.
        format: ``"lm_eval"`` (the task's lm-eval prompt) or ``"ab"`` (lettered options).
        limit: Keep at most this many items in each scored split, select and report (the
            first after the seeded order), for quick runs. The fit split is never cut: how
            many fit items become contrastive pairs is ``make_pairs``'s ``n_pairs`` (config
            ``task.n_pairs``) alone.
        seed: Orders the items within each split; it never changes which items a split holds.
        path: The user's data: a canonical JSONL file (carved into thirds) or a folder
            with fit.jsonl, select.jsonl and report.jsonl (not with a registered name).

    Returns:
        A ``Task`` whose splits are checked to be disjoint by item id. Every record is
        checked (``validate_record``) before any is rendered; contexts longer than
        ``LONG_CONTEXT_CHARS`` are kept and logged as one warning.

    Example:
        >>> task = load_task("copa")  # doctest: +SKIP
        >>> {split: len(items) for split, items in task.splits.items()}  # doctest: +SKIP
        {'fit': 200, 'select': 300, 'report': 500}
    """
    if format not in FORMATS:
        raise TaskError(f"format={format!r} is not one of {list(FORMATS)}")
    if limit is not None and limit < 1:
        raise TaskError(f"limit={limit} must be None (all items) or a positive int")
    if path is not None:  # the user's data: jsonl, or any name of the user's choosing
        if name in TASKS:
            raise TaskError(
                f"task.name={name!r} is a registered task, and task.path={str(path)!r} gives "
                f"other data: name your data (e.g. task.name={name}_mine), or drop task.path "
                f"to load the registered {name!r}"
            )
        check_data_name(name)
        spec, root = _jsonl_spec(Path(path)), Path()
    elif name == JSONL_TASK:
        raise TaskError(
            "load_task('jsonl') needs path= to a canonical JSONL file "
            "or to a folder with fit.jsonl, select.jsonl and report.jsonl (task.path=...)"
        )
    elif name in TASKS:
        spec = TASKS[name]
        root = existing_dir(Path(data_dir), "data_dir=") if data_dir else default_data_dir()
    else:
        known = [*TASKS, JSONL_TASK]
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean {close}?" if close else ""
        raise TaskError(
            f"unknown task {name!r}.{hint} Known tasks: {known}; for your own data "
            f"give its file: task=jsonl task.path=FILE (and task.name=<a name for it>), or "
            f"load_task(<name>, path=...)"
        )
    files: dict[str, list[Record]] = {}
    chosen: dict[SplitName, list[Record]] = {}
    for split in SPLITS:
        source: SplitSource = getattr(spec, split)
        if source.file not in files:
            files[source.file] = read_jsonl(
                root / spec.folder / source.file,
                validate=True,
                unique_choices=spec.unique_choices,
            )
        records = list(files[source.file])
        if source.shuffled:
            random.Random(spec.split_seed).shuffle(records)
        chosen[split] = records[source.start : source.stop]
        if not chosen[split]:
            raise TaskError(_empty_split(name, split, source, len(records), path is not None))
    check_disjoint({s: [r["id"] for r in rs] for s, rs in chosen.items()}, name)
    splits: dict[SplitName, list[Item]] = {}
    for split, records in chosen.items():
        random.Random(f"{seed}:{split}").shuffle(records)
        kept = records if split == "fit" else records[:limit]
        splits[split] = [_render(spec, r, format) for r in kept]
    _warn_long_contexts(name, splits)
    return Task(name, splits, format, spec.metric, spec)


def check_data_name(name: str) -> str:
    """A data name names files and directories: letters, digits, `_`, `-` and `.` only."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise TaskError(
            f"task.name={name!r} names files and directories of the run: use letters, digits, "
            "'_', '-' and '.' only, starting with a letter or digit (e.g. task.name=xcopa_it)"
        )
    return name


def _empty_split(name: str, split: str, source: SplitSource, n_records: int, users: bool) -> str:
    """Why a split came out empty, in the user's terms, with the fix."""
    if users and source.shuffled:  # one file carved into thirds
        return (
            f"task {name!r}: {source.file} holds {n_records} record(s); it is carved into "
            f"fit / select / report thirds, which leaves the {split} split empty: give at "
            "least 3 records (one per split; for a useful fit, 30 or more), or a folder "
            "with fit.jsonl, select.jsonl and report.jsonl"
        )
    if users:
        return f"task {name!r}: {source.file} holds no records for the {split} split; add some"
    return (
        f"task {name!r}: split {split!r} = {source.describe()} is empty ({n_records} "
        "records in the file); give the task more items"
    )


def _warn_long_contexts(name: str, splits: dict[SplitName, list[Item]]) -> None:
    long = [
        (len(item.question), split, item.id)
        for split, items in splits.items()
        for item in items
        if len(item.question) > LONG_CONTEXT_CHARS
    ]
    if not long:
        return
    chars, split, item_id = max(long)
    counts = {s: n for s in splits if (n := sum(entry[1] == s for entry in long))}
    log.warning(
        "task %r: %d item(s) have a context longer than %d characters (%s); the longest is "
        "%r in %r, %d characters. They are kept (never dropped) and slow to score: lm-eval "
        "keeps the last max_length tokens of context + continuation (left truncation; see "
        "model.max_length), and fitting raises on a row longer than the model's context. "
        "Shorten or remove them in the data file if they are not meant to be this long.",
        name,
        len(long),
        LONG_CONTEXT_CHARS,
        ", ".join(f"{s}: {n}" for s, n in counts.items()),
        item_id,
        split,
        chars,
    )
