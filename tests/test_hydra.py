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


def test_a_point_with_long_overrides_gets_a_directory_name_that_fits() -> None:
    """Overrides too long for one file name (255 bytes) are cut and named by a digest of
    them all: one directory per point, the same on every rerun, distinct per point."""
    from sadi.pipeline.config import POINT_DIR_BYTES, point_dir

    long = ",".join(f"intervention.param_{i}=value_{i}" for i in range(12))
    other = long.replace("value_11", "value_12")
    a, b = point_dir(long, "src", None, "data"), point_dir(other, "src", None, "data")
    assert len(a.encode()) < 255 and len(b.encode()) < 255 and a != b
    assert a == point_dir(long, "src", None, "data")
    assert a.startswith(long.encode()[: POINT_DIR_BYTES - 20].decode())
    short = "intervention.k=3"
    assert point_dir(short, "src", None, "data").startswith(short + ",in-")
