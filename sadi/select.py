"""`python -m sadi.select SWEEP_DIR`: choose each group's point on the select split and
score the report split once for it (`sadi.pipeline.selection`)."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from sadi.infra.errors import reported
from sadi.infra.verbosity import console_notes
from sadi.pipeline.selection import check_report_override, select


def main(argv: list[str] | None = None) -> None:
    console_notes()
    parser = argparse.ArgumentParser(prog="python -m sadi.select", description=__doc__)
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--logger", choices=["wandb", "none"], default=None)
    parser.add_argument(
        "--side-effects",
        nargs="*",
        default=None,
        metavar="TASK",
        help="tasks also scored for the chosen point, with and without steering (e.g. mmlu)",
    )
    parser.add_argument("--side-limit", type=int, default=500, help="items per side task")
    parser.add_argument(
        "--across-components",
        action="store_true",
        help="choose the component like any other hyperparameter (e.g. AUSteer's site)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config value of the report run that changes how it scores, not what was "
        "chosen, e.g. sweep.engine=true (the same numbers, faster), task.open_ended=true "
        "(also generate on the open-ended prompts) or judge.base_url=URL (the judge's "
        "server, where it moved); repeatable",
    )
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--set {item!r}: give KEY=VALUE, e.g. --set sweep.engine=true")
        try:
            check_report_override(key)
        except ValueError as err:
            parser.error(f"--set {item}: {err}")
        overrides[key] = yaml.safe_load(value)
    select(
        args.sweep_dir,
        logger=args.logger,
        side_effects=args.side_effects,
        side_limit=args.side_limit,
        across_components=args.across_components,
        overrides=overrides,
    )


if __name__ == "__main__":
    with reported("sadi.select"):
        main()
