"""The one use of Hydra's internals (`sadi.pipeline.hydra.expand_grid`, its basic sweeper's
grid expansion) gives exactly the jobs a real Hydra sweep runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sadi.pipeline.hydra import expand_grid

APP = """
import json, sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path=".", config_name="config")
def main(cfg: DictConfig) -> None:
    out = Path(sys.argv[0]).parent / "jobs.jsonl"
    with out.open("a") as f:
        f.write(json.dumps(list(HydraConfig.get().overrides.task)) + "\\n")


if __name__ == "__main__":
    main()
"""


def test_expand_grid_gives_the_jobs_hydra_runs(tmp_path: Path) -> None:
    """A grid from both places Hydra takes one (the config's `hydra.sweeper.params`, as the
    experiments write it, and the command line)."""
    app = tmp_path / "app.py"
    app.write_text(APP)
    (tmp_path / "config.yaml").write_text(
        "a: 0\nb: x\nc: 0\nhydra:\n  sweeper:\n    params:\n      b: x,y\n"
    )
    params = {"b": "x,y"}
    overrides = ["a=1,2,3", "c=fixed"]
    proc = subprocess.run(
        [sys.executable, str(app), "-m", *overrides, f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    ran = [json.loads(line) for line in (tmp_path / "jobs.jsonl").read_text().splitlines()]
    assert len(ran) == 6
    assert sorted(map(sorted, expand_grid(params, overrides))) == sorted(map(sorted, ran))
