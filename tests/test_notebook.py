"""notebooks/compare.ipynb runs top to bottom on synthetic run directories."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

try:
    from tests.test_curves import curve_sweep
    from tests.test_report import build_dirs
except ImportError:  # plain `pytest` (not `python -m pytest`) leaves the repo root off sys.path
    from test_curves import curve_sweep  # type: ignore[no-redef]
    from test_report import build_dirs  # type: ignore[no-redef]

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "compare.ipynb"


def test_notebook_has_no_stored_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_compare_notebook_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dirs = build_dirs(tmp_path / "runs")
    out = tmp_path / "figures"
    curve = curve_sweep(
        tmp_path / "curve", "caa", "multiplier", [-1.0, 1.0], lambda m, i: 0.5 + m / 10
    )
    # the kernel inherits this process's environment
    monkeypatch.setenv("SADI_REPORT_DIRS", os.pathsep.join(map(str, dirs)))
    monkeypatch.setenv("SADI_CURVE_DIRS", str(curve))
    monkeypatch.setenv("SADI_REPORT_OUT", str(out))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    # strength sweep, SADI and ITI heads, method bars, the curve (no delta heatmap: one task)
    assert len(images) == 5
    assert any("sadi-head" in o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert any("multiplier -1..1" in o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert sorted(p.name.split("_")[0] for p in out.glob("*.png")) == [
        "curve",
        "heads",
        "heads",
        "methods",
        "strength",
    ]
