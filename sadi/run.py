"""`python -m sadi.run`: the Hydra entry point. Compose the config, build the run's context,
run it (`sadi.pipeline.runner`), report.

    python -m sadi.run                                  # SADI heads, COPA, SmolLM2
    python -m sadi.run task=sst2 component=neuron intervention.k=50 intervention.strength=10
    python -m sadi.run -m experiment=sadi_head task=copa,sst2      # a sweep (select split)

The run directory receives: `.hydra/` (the resolved config), `results.json`, `pairs.jsonl`,
`splits.json` (item ids and split rules), `steerer/` (the fitted artifact) and
`samples_<task>_<split>.jsonl` (steered; `_baseline` for the unsteered model). A point whose
`results.json` already holds the same config and inputs is skipped, so a crashed sweep
resumes. A user error prints one line (exit 2); a failed sweep point is recorded in its run
directory and the sweep goes on (`sadi.pipeline.failures`).
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from sadi.infra.errors import reported
from sadi.pipeline import runner
from sadi.pipeline.config import register_configs
from sadi.pipeline.context import RunContext
from sadi.pipeline.failures import clear_failure, record_failure
from sadi.pipeline.hydra import in_multirun, task_overrides
from sadi.pipeline.validate import ConfigError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ("model", "task", "component", "prompt", "intervention", "logger", "experiment")
# options whose Hydra plugin is an optional extra: (plugin module, how to install it)
OPTIONAL_PLUGINS = {
    "hydra/launcher=ray_local": ("hydra_plugins.hydra_ray_launcher", "pip install -e '.[ray]'"),
    "hydra/launcher=ray_cluster": ("hydra_plugins.hydra_ray_launcher", "pip install -e '.[ray]'"),
}


def run(cfg: DictConfig, job_type: str = "eval") -> float:
    """Run the composed `cfg` (`sadi.pipeline.runner.run`); returns its optimized metric."""
    return runner.run(RunContext.build(cfg, job_type))


def search_dirs(argv: list[str]) -> list[Path] | None:
    """The config directories options are looked up in: conf/ and every `file://` directory
    of a `hydra.searchpath=[...]` override (a method or task of the user's own, outside the
    project); None when a search path is not a directory (then Hydra alone checks)."""
    dirs = [CONF_DIR]
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+") == "hydra.searchpath":
            for entry in (e.strip().strip("'\"") for e in value.strip("[]").split(",")):
                if not entry.startswith("file://"):
                    return None
                dirs.append(Path(entry.removeprefix("file://")))
    return dirs


def check_overrides(argv: list[str]) -> None:
    """Fail early on a config-group option that does not exist, suggesting the nearest."""
    dirs = search_dirs(argv)
    for arg in argv:
        if arg in OPTIONAL_PLUGINS and importlib.util.find_spec(OPTIONAL_PLUGINS[arg][0]) is None:
            raise ConfigError(
                f"{arg} needs the optional plugin {OPTIONAL_PLUGINS[arg][0]}, not "
                f"installed here: {OPTIONAL_PLUGINS[arg][1]}"
            )
        group, sep, value = arg.partition("=")
        group = group.lstrip("+~")
        if not sep or group not in GROUPS or dirs is None:
            continue
        known = sorted({p.stem for d in dirs for p in (d / group).glob("*.yaml")})
        for option in value.split(","):
            if option and option not in known:
                near = difflib.get_close_matches(option, known, n=3, cutoff=0.4)
                hint = f" Did you mean {near}?" if near else ""
                raise ConfigError(
                    f"unknown {group} {option!r}.{hint} Available: {known} "
                    f"(one YAML per option in {', '.join(str(d / group) for d in dirs)})"
                )


register_configs()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    """One run, or one point of a sweep. A single run prints a user error as one line (exit
    2; `verbose=true` for the traceback). A sweep point that fails is recorded in its run
    directory and the sweep goes on; `FailedPoints` lists every failure at the end."""
    if not in_multirun():
        with reported("sadi.run", verbose=True if cfg.verbose else None):
            return run(cfg)
    run_dir = Path(cfg.paths.output_dir)
    try:
        value = run(cfg)
    except Exception as err:  # every point is tried; the sweep ends with the list
        record_failure(run_dir, task_overrides(), err)
        return math.nan
    clear_failure(run_dir)
    return value


if __name__ == "__main__":
    with reported("sadi.run"):
        check_overrides(sys.argv[1:])
        main()
