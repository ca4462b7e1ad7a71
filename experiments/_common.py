"""Shared by the experiment scripts: run a command (echoing it first), read what a select
stage chose, and time each stage into a log that the README's run times come from."""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# the embedded models' sizes the grids are written against (conf/model/*.yaml)
N_LAYERS = {"smollm2_135m": 30, "gemma3_270m": 18}


def run(args: list[str], dry_run: bool, log: Path | None = None) -> None:
    """Echo `args` as `$ <command>`, then run it (unless `dry_run`); with `log`, append the
    command and its wall time as one JSON line."""
    print("$ " + shlex.join(args), flush=True)
    if dry_run:
        return
    start = time.time()
    subprocess.run(args, check=True)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as f:
            f.write(json.dumps({"command": shlex.join(args), "seconds": time.time() - start}))
            f.write("\n")


def run_combined(args: list[str], dry_run: bool, per_task: str) -> None:
    """Run a report step over every sweep on this machine; where it fails (e.g. the report's
    guard refusing to drop rows whose sweeps are gone), end with a message naming the
    per-task reports, which were written already, instead of a traceback."""
    try:
        run(args, dry_run)
    except subprocess.CalledProcessError:
        out = args[args.index("--out") + 1]
        sys.exit(
            f"the combined report in {out} was not written (the reason is above); each "
            f"task's own report is in {per_task}"
        )


def add_replace(parser: argparse.ArgumentParser) -> None:
    """`--replace`: let the report step drop rows the existing report holds (sadi.report)."""
    parser.add_argument(
        "--replace",
        action="store_true",
        help="let the report overwrite rows of an existing report that this run does not cover",
    )


def replace_flag(args: argparse.Namespace) -> list[str]:
    return ["--replace"] if args.replace else []


def sadi_run(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "sadi.run", "-m", *overrides]


def select_cmd(sweep: str, *flags: str) -> list[str]:
    return [sys.executable, "-m", "sadi.select", sweep, "--logger", "none", *flags]


def report_cmd(paths: list[str], out: str | Path, *flags: str) -> list[str]:
    """`python -m sadi.report PATHS --out OUT FLAGS`."""
    return [sys.executable, "-m", "sadi.report", *paths, "--out", str(out), *flags]


def finished(root: Path, depth: int = 2) -> list[str]:
    """Sweep directories `depth` levels below `root` whose select stage has finished."""
    pattern = "/".join(["*"] * depth) + "/selected/*/selection.json"
    return sorted({str(p.parents[2]) for p in root.glob(pattern)})


def chosen(sweep: str | Path) -> list[dict[str, Any]]:
    """What `sadi.select` chose in a sweep: per group, the chosen point's intervention
    parameters and its component (read from the point's results.json)."""
    out = []
    for path in sorted(Path(sweep).glob("selected/*/selection.json")):
        sel = json.loads(path.read_text())
        config = json.loads((Path(sel["chosen"]["run_dir"]) / "results.json").read_text())
        out.append(
            {
                "group": sel["group"],
                "params": sel["chosen"]["params"],
                "component": config["config"]["component"]["name"],
            }
        )
    if not out:
        raise FileNotFoundError(f"no selected/*/selection.json in {sweep}: run sadi.select first")
    return out
