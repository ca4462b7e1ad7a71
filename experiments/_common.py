"""Shared by the experiment scripts: run a command, echoing it first."""

from __future__ import annotations

import shlex
import subprocess
import sys


def run(args: list[str], dry_run: bool) -> None:
    print("$ " + shlex.join(args), flush=True)
    if not dry_run:
        subprocess.run(args, check=True)


def sadi_run(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "sadi.run", "-m", *overrides]
