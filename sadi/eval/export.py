"""sadi's task splits as lm-eval task YAMLs + JSONL data, for lm-eval's own CLI, offline.

`sadi-lm-eval tasks export DIR` writes, per task and scored split, `DIR/<name>.yaml` and the
split's items `DIR/<name>.jsonl`; `sadi-lm-eval run --include_path DIR --tasks <name>` then
scores it. Each YAML is `sadi.eval.harness.task_config` of that data file (the config
`python -m sadi.run` scores with) plus a `tag`, so both give the same numbers for the same
model, steerer and items. A callable in the config (TruthfulQA MC2's `process_results`) is
written as lm-eval's `!function <module>.<name>`, which lm-eval 0.4.13 imports by its dotted
path when no file of that name lies beside the YAML.

Names: `sadi_<task>_<split>` (as `sadi.run` names them), `sadi_<task>_ab_<split>` for the ab
format; tags `sadi_<split>` / `sadi_ab_<split>` select every exported task of one split.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sadi.data.tasks import FORMATS, JSONL_TASK, SPLITS, TASKS, PromptFormat, SplitName, load_task
from sadi.data.tasks.data import check_split_names
from sadi.eval.harness import task_config, write_split

EXPORTED_SPLITS: tuple[SplitName, ...] = ("select", "report")
# the datasets json loader reads data_files as glob patterns
_GLOB_CHARS = "*?[]"


@dataclass(frozen=True)
class ExportedTask:
    """One written lm-eval task: its name, YAML, data file and item count."""

    name: str
    yaml: Path
    data: Path
    n_items: int


def lm_eval_name(task: str, split: SplitName, format: PromptFormat = "lm_eval") -> str:
    """The lm-eval task name of one sadi task split, e.g. `sadi_copa_report`."""
    return f"sadi_{task}_{'ab_' if format == 'ab' else ''}{split}"


def lm_eval_tag(split: SplitName, format: PromptFormat = "lm_eval") -> str:
    """The lm-eval tag of every exported task of one split and format, e.g. `sadi_report`."""
    return f"sadi_{'ab_' if format == 'ab' else ''}{split}"


def _function_name(fn: Callable[..., Any]) -> str:
    """`module.name` of a module-level function, checked to import back to `fn`."""
    qual = f"{fn.__module__}.{fn.__qualname__}"
    module = importlib.import_module(fn.__module__)
    if getattr(module, fn.__qualname__, None) is not fn:
        raise ValueError(
            f"task config function {qual!r} is not importable as module.name; lm-eval's "
            "`!function` needs a module-level function: move it to module level"
        )
    return qual


class _Function(str):
    """A string written as YAML `!function <value>`."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(
    _Function, lambda dumper, value: dumper.represent_scalar("!function", str(value))
)


def task_yaml(config: dict[str, Any]) -> str:
    """An lm-eval task config as YAML; callables become `!function module.name`."""

    def convert(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [convert(v) for v in value]
        if callable(value):
            return _Function(_function_name(value))
        return value

    return yaml.dump(convert(config), Dumper=_Dumper, sort_keys=False, allow_unicode=True)


def _check_tasks(tasks: Sequence[str], path: str | Path | None) -> list[str]:
    """The task names, checked: registered ones, or with `path` the one name of the user's
    data (`load_task` then checks it, as for `sadi.run`'s task.name)."""
    known = [*TASKS, JSONL_TASK]
    if not tasks:
        raise ValueError(f"no tasks given; name at least one of {known} (or omit tasks: all)")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks={list(tasks)} names a task twice; name each once")
    if path is not None:
        if len(tasks) != 1:
            raise ValueError(
                f"path={str(path)!r} gives one dataset: name it once (--tasks {JSONL_TASK}, or "
                f"a name of your own that is not a registered task); got tasks={list(tasks)}"
            )
        return list(tasks)
    for name in tasks:
        if name == JSONL_TASK:
            raise ValueError(
                f"the task {JSONL_TASK!r} is your own data: give path= (--path FILE) to a "
                "canonical JSONL file or a folder with fit/select/report.jsonl"
            )
        if name not in TASKS:
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
            hint = f" Did you mean {close}?" if close else ""
            raise ValueError(
                f"unknown task {name!r}.{hint} Known tasks: {known}; for your own data give "
                "path= (--path FILE)"
            )
    return list(tasks)


def export_tasks(
    directory: str | Path,
    tasks: Sequence[str] | None = None,
    *,
    format: PromptFormat = "lm_eval",
    splits: Sequence[str] = EXPORTED_SPLITS,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    seed: int = 0,
    path: str | Path | None = None,
) -> list[ExportedTask]:
    """Write an lm-eval task YAML and its JSONL data for each task and split.

    Args:
        directory: Where to write (created if missing); files of the same names are
            overwritten. The YAMLs hold the data files' absolute paths: export again after
            moving it. Its path must not contain glob characters (`*?[]`).
        tasks: Keys of `sadi.data.tasks.TASKS`, or with `path=` one name for that data
            (`"jsonl"` or any unregistered name, as `task.name`); default all of `TASKS`.
        format: `"lm_eval"` or `"ab"`, as `load_task`.
        splits: Splits to export, default select and report (where `sadi.run` scores).
        data_dir, limit, seed, path: As `load_task`; `limit` and `seed` pick and order the
            items exactly as `python -m sadi.run task.limit=... seed=...` does.

    Returns:
        One `ExportedTask` per task and split, in the order written.

    Example:
        >>> export_tasks("lm_eval_tasks", ["copa"])  # doctest: +SKIP
        [ExportedTask(name='sadi_copa_select', ...), ExportedTask(name='sadi_copa_report', ...)]
    """
    out = Path(directory).expanduser().resolve()
    bad = sorted({c for c in str(out) if c in _GLOB_CHARS})
    if bad:
        raise ValueError(
            f"export directory {out} contains {bad}: the datasets json loader reads data file "
            "paths as glob patterns, so lm-eval would not find the data; choose a directory "
            f"whose path has none of {list(_GLOB_CHARS)}"
        )
    if format not in FORMATS:
        raise ValueError(f"format={format!r} is not one of {list(FORMATS)}")
    chosen_splits = check_split_names(splits)
    names = _check_tasks(list(TASKS) if tasks is None else list(tasks), path)
    loaded = [  # every task loads (and its data checks) before anything is written
        load_task(
            task_name,
            data_dir=data_dir,
            format=format,
            limit=limit,
            seed=seed,
            path=path,
        )
        for task_name in names
    ]
    out.mkdir(parents=True, exist_ok=True)
    written: list[ExportedTask] = []
    for task_name, task in zip(names, loaded):
        for split in chosen_splits:
            name = lm_eval_name(task_name, split, format)
            items = task.splits[split]
            data = write_split(items, out / f"{name}.jsonl")
            config = {
                **task_config(name, data, task.metric),
                "tag": [lm_eval_tag(split, format)],
            }
            header = (
                f"# sadi task {task_name!r}, split {split!r} ({len(items)} items), format "
                f"{format!r}; written by `sadi-lm-eval tasks export`.\n"
                f"# Scored as `python -m sadi.run` scores it: sadi.eval.harness.task_config.\n"
                f"# sadi-lm-eval run --model sadi --include_path {out} --tasks {name} "
                "--model_args pretrained=...,steerer=DIR\n"
            )
            target = out / f"{name}.yaml"
            target.write_text(header + task_yaml(config))
            written.append(ExportedTask(name, target, data, len(items)))
    return written


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="sadi's tasks for lm-eval's own CLI (sadi-lm-eval run)."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    export = commands.add_parser(
        "export",
        help="write lm-eval task YAMLs + JSONL data for sadi task splits",
        description=(
            "Write, per task and split, DIR/<name>.yaml and DIR/<name>.jsonl, named\n"
            "sadi_<task>_<split> (sadi_<task>_ab_<split> with --format ab) and tagged\n"
            "sadi_<split>. They use sadi.eval.harness.task_config, so lm-eval gives the numbers\n"
            "of `python -m sadi.run` on the same items. Score them with:\n"
            "  sadi-lm-eval run --model sadi --include_path DIR --tasks sadi_copa_report \\\n"
            "    --model_args pretrained=embedded:smollm2-135m-instruct,steerer=STEERER_DIR"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("directory", metavar="DIR", type=Path, help="where to write")
    export.add_argument(
        "--tasks",
        nargs="+",
        default=None,
        metavar="TASK",
        help=f"space or comma separated; default all registered: {', '.join(TASKS)}; "
        f"or with --path one name for that data ({JSONL_TASK} or your own)",
    )
    export.add_argument(
        "--format",
        choices=FORMATS,
        default="lm_eval",
        help="lm_eval (the task's lm-eval prompt, default) or ab (lettered options, "
        "what the caa_* task configs use)",
    )
    export.add_argument(
        "--splits",
        nargs="+",
        choices=SPLITS,
        default=list(EXPORTED_SPLITS),
        metavar="SPLIT",
        help=f"of {', '.join(SPLITS)}; default {' '.join(EXPORTED_SPLITS)}",
    )
    export.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="sadi's data directory (default: $SADI_DATA_DIR, else shared/data beside the repo)",
    )
    export.add_argument(
        "--limit",
        type=int,
        default=None,
        help="at most this many items per split (as sadi.run's task.limit; all by default)",
    )
    export.add_argument(
        "--seed", type=int, default=0, help="orders the items, as sadi.run's seed (default 0)"
    )
    export.add_argument(
        "--path",
        type=Path,
        default=None,
        help="your own data (file or folder), exported under the one name --tasks gives",
    )
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "sadi-lm-eval tasks") -> None:
    """`sadi-lm-eval tasks export DIR [options]`: parse `argv` and export; prints each task."""
    parser = _parser(prog)
    args = parser.parse_args(argv)
    tasks = None
    if args.tasks is not None:
        tasks = [t for arg in args.tasks for t in arg.split(",") if t]
    try:
        written = export_tasks(
            args.directory,
            tasks,
            format=args.format,
            splits=args.splits,
            data_dir=args.data_dir,
            limit=args.limit,
            seed=args.seed,
            path=args.path,
        )
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    for task in written:
        print(f"{task.name}: {task.n_items} items -> {task.yaml}")
    out = written[0].yaml.parent
    print(
        f"\nscore them with:\n  sadi-lm-eval run --model sadi --include_path {out} "
        f"--tasks {written[0].name} --model_args pretrained=...,steerer=DIR"
    )
