"""Run-directory outputs and Weights & Biases logging (offline by default)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol

from sadi.infra.errors import UserError
from sadi.infra.files import atomic_open


def write_json(path: Path, data: Any) -> Path:
    """Write JSON atomically (a crash never leaves a half-written file), umask honoured."""
    with atomic_open(path) as f:
        json.dump(data, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
    return path


DAMAGED_FIX = (
    "it was cut short (a crash or a full disk mid-write) or edited: move it aside and "
    "recompute what wrote it"
)


class DamagedFileError(UserError):
    """A JSON or JSONL file that does not parse: the message names the file, where it
    breaks, and the fix. A cache treats it as a miss; a results file is named to the user."""

    def __init__(self, path: Path, detail: str, fix: str = DAMAGED_FIX) -> None:
        super().__init__(f"{path}: {detail}; {fix}")
        self.path = path


def read_json(path: Path, fix: str = DAMAGED_FIX) -> Any:
    """A JSON file's value; `DamagedFileError` (naming the file and `fix`) if it does not
    parse."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DamagedFileError(path, f"not valid JSON ({err})", fix) from err


RESULTS_FIX = (
    "it was cut short (a crash or a full disk mid-write) or edited: rerun the command that "
    "wrote it (a sweep command recomputes only this point and keeps the damaged file aside), "
    "or delete its run directory"
)


def read_results(path: Path) -> dict[str, Any]:
    """A run's results.json; `DamagedFileError` naming it and the fix if it does not parse."""
    results = read_json(path, RESULTS_FIX)
    if not isinstance(results, dict) or "config" not in results:
        raise DamagedFileError(path, "not a results.json of sadi (no 'config')", RESULTS_FIX)
    return results


def read_jsonl(path: Path, fix: str = DAMAGED_FIX) -> list[dict[str, Any]]:
    """A JSONL file's rows (blank lines skipped); `DamagedFileError` naming the line that
    does not parse."""
    rows = []
    try:
        text = path.read_text()
    except UnicodeDecodeError as err:
        raise DamagedFileError(path, f"not UTF-8 text ({err})", fix) from err
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise DamagedFileError(path, f"line {number} is not valid JSON ({err})", fix) from err
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write one JSON object per line, atomically, umask honoured."""
    with atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


_USER_WANDB_ENV = {k for k in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR") if k in os.environ}


class Tracker(Protocol):
    def log(self, metrics: dict[str, float]) -> None: ...
    def log_artifact(self, path: Path, name: str, kind: str) -> None: ...
    def log_table(self, key: str, rows: list[dict[str, Any]]) -> None: ...
    def finish(self) -> None: ...


class NoTracker:
    """logger=none: nothing leaves the run directory."""

    def log(self, metrics: dict[str, float]) -> None:
        pass

    def log_artifact(self, path: Path, name: str, kind: str) -> None:
        pass

    def log_table(self, key: str, rows: list[dict[str, Any]]) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbTracker:
    """One W&B run; files and artifact staging stay inside the run directory."""

    def __init__(
        self,
        run_dir: Path,
        config: dict[str, Any],
        *,
        project: str,
        mode: str,
        group: str | None,
        entity: str | None,
        name: str,
        job_type: str,
    ) -> None:
        # Stage artifacts inside this run's directory unless the user chose a place.
        for var, sub in (("WANDB_DATA_DIR", "wandb-staging"), ("WANDB_CACHE_DIR", "wandb-cache")):
            if var not in _USER_WANDB_ENV:
                os.environ[var] = str(run_dir / sub)
        import wandb

        self._wandb = wandb
        self.run = wandb.init(
            project=project,
            entity=entity,
            mode=os.environ.get("WANDB_MODE", mode),  # type: ignore[arg-type]
            dir=str(run_dir),
            config=config,
            group=group,
            name=name,
            job_type=job_type,
        )

    def log(self, metrics: dict[str, float]) -> None:
        self.run.log(metrics)
        for key, value in metrics.items():
            self.run.summary[key] = value

    def log_artifact(self, path: Path, name: str, kind: str) -> None:
        artifact = self._wandb.Artifact(name=name, type=kind)
        if path.is_dir():
            artifact.add_dir(str(path))
        else:
            artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def log_table(self, key: str, rows: list[dict[str, Any]]) -> None:
        """Per-sample rows as a W&B table (lists are stored as JSON text)."""
        if not rows:
            return
        columns: list[str | int] = list(rows[0])
        data = [
            [json.dumps(r[c]) if isinstance(r[c], list | dict) else r[c] for c in rows[0]]
            for r in rows
        ]
        self.run.log({key: self._wandb.Table(columns=columns, data=data)})

    def finish(self) -> None:
        self.run.finish()
        # finish() can return before the service has written the last records of an offline
        # run; tearing the service down waits for it, so the .wandb file is complete
        self._wandb.teardown()
