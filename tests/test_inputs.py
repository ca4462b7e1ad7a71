"""Content fingerprints of a run's inputs: the task data as loaded, the model's weight files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sadi.data.tasks import EXAMPLE_DATA, load_task
from sadi.pipeline.inputs import data_fingerprint, directory_fingerprint, model_fingerprint


def test_data_fingerprint_follows_the_content_not_the_path(tmp_path: Path) -> None:
    a = tmp_path / "a.jsonl"
    shutil.copy(EXAMPLE_DATA / "tiny_mc.jsonl", a)
    b = tmp_path / "elsewhere" / "b.jsonl"
    b.parent.mkdir()
    shutil.copy(a, b)
    fp_a = data_fingerprint(load_task("jsonl", path=str(a)))
    assert fp_a == data_fingerprint(load_task("jsonl", path=str(b)))  # same content
    rows = [json.loads(line) for line in a.read_text().splitlines()]
    rows[-1]["label"] = 1 - rows[-1]["label"]
    a.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert data_fingerprint(load_task("jsonl", path=str(a))) != fp_a


def test_weights_fingerprint_follows_the_weight_files(tiny_model_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    assert directory_fingerprint(copy) == directory_fingerprint(Path(tiny_model_dir))
    assert model_fingerprint(str(copy)) == directory_fingerprint(copy)
    weights = next(copy.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one byte of the last tensor
    weights.write_bytes(bytes(data))
    assert directory_fingerprint(copy) != directory_fingerprint(Path(tiny_model_dir))


def test_a_hub_id_not_downloaded_is_named_not_read() -> None:
    assert model_fingerprint("no-such-org/no-such-model") == "hub:no-such-org/no-such-model"
