"""The README's commands work as written (slow: the embedded SmolLM2 and the real data).

The Python snippet runs verbatim. The sweep -> select -> report block runs verbatim too,
with overrides appended to the sweep that shrink it (8 items, 8 pairs, a 2 x 2 grid instead
of the authors' 6 x 16), so that it fits in CI; select and report take no extra argument.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[1] / "README.md"
SHRINK = [
    "task.limit=8",
    "task.n_pairs=8",
    "intervention.k=1,2",
    "intervention.strength=5,10",
    "progress=false",
]


def block(after: str, language: str) -> str:
    """The first ```language block after the heading `after` in the README."""
    text = README.read_text(encoding="utf-8")
    start = text.index(after)
    match = re.search(rf"```{language}\n(.*?)```", text[start:], re.S)
    assert match, f"no {language} block after {after!r}"
    return match.group(1)


def commands(script: str) -> list[list[str]]:
    """The shell commands of a block, comments dropped."""
    return [shlex.split(line, comments=True) for line in script.splitlines() if line.strip()]


def env() -> dict[str, str]:
    repo = str(README.parent)
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "WANDB_MODE": "offline",
    }


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=1800, env=env(), cwd=cwd)
    assert proc.returncode == 0, f"{shlex.join(args)}\n{proc.stderr[-3000:]}"
    return proc


def test_the_python_snippet_runs(tmp_path: Path) -> None:
    code = block("## Python", "python")
    code += "\nimport json\nprint(json.dumps(list(out.logits.shape)))\n"
    proc = run([sys.executable, "-c", code], tmp_path)
    assert json.loads(proc.stdout.strip().splitlines()[-1])[0] == 1
    assert (tmp_path / "my_steerer" / "steerer.json").is_file()


def test_sweep_select_report_run(tmp_path: Path) -> None:
    sweep, select, report = commands(block("## Sweep, select, report", "bash"))
    assert sweep[:3] == ["python", "-m", "sadi.run"] and "-m" in sweep[3:]
    run([sys.executable, *sweep[1:], *SHRINK], tmp_path)
    directory = tmp_path / select[-1]
    points = sorted(directory.glob("*/results.json"))
    assert len(points) == 2 * 2 * 2  # two tasks x the 2 x 2 grid
    run([sys.executable, *select[1:]], tmp_path)
    chosen = sorted(directory.glob("selected/*/selection.json"))
    assert len(chosen) == 2  # one per task, each chosen among its 4 points
    assert all(json.loads(p.read_text())["n_points"] == 4 for p in chosen)
    printed = run([sys.executable, *report[1:]], tmp_path).stdout
    assert "sadi-head" in printed
    out = tmp_path / report[report.index("--out") + 1]
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    assert list(out.glob("*.png"))
