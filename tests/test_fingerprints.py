"""Every cache key and artifact check covers every weight: a model changed in place, in one
middle layer only, is recomputed everywhere and refused by a steerer fitted before."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sadi.core.fingerprints import DIGEST_INDEX, directory_fingerprint, file_digest
from sadi.core.models import load_model
from sadi.run import run
from sadi.steerers import Steerer, WeightsMismatch
from tests.test_run import compose_run, tiny_overrides

MIDDLE = "model.layers.1.mlp.down_proj.weight"  # of the tiny Llama's three layers


def change_middle_layer(model_dir: Path) -> None:
    """Add noise to one middle-layer weight in place: same file, same size."""
    path = model_dir / "model.safetensors"
    size = path.stat().st_size
    tensors = load_file(str(path))
    generator = torch.Generator().manual_seed(0)
    tensors[MIDDLE] = tensors[MIDDLE] + torch.randn(tensors[MIDDLE].shape, generator=generator)
    save_file(tensors, str(path), metadata={"format": "pt"})
    assert path.stat().st_size == size


def lls(run_dir: Path, name: str) -> list[list[float]]:
    rows = (run_dir / name).read_text().splitlines()
    return [json.loads(r)["loglikelihoods"] for r in rows]


def entries(root: Path) -> set[str]:
    return {p.name for p in root.iterdir() if p.is_dir()} if root.exists() else set()


@pytest.mark.parametrize("engine", [False, True])
def test_a_middle_layer_changed_in_place_recomputes_every_cache(
    tiny_model_dir: Path, tmp_path: Path, engine: bool
) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    cache = tmp_path / "cache"
    out = tmp_path / "run"
    overrides = tiny_overrides(
        model_dir, out, f"paths.cache_dir={cache}", f"sweep.engine={str(engine).lower()}"
    )
    run(compose_run(overrides))
    before = json.loads((out / "results.json").read_text())
    steerer_before = tmp_path / "steerer_before"
    shutil.copytree(out / "steerer", steerer_before)
    base_before = lls(out, "samples_jsonl_select_baseline.jsonl")
    steered_before = lls(out, "samples_jsonl_select.jsonl")
    caches = {name: entries(cache / name) for name in ("fits", "baselines", "sweeps")}

    change_middle_layer(model_dir)
    run(compose_run(overrides))
    after = json.loads((out / "results.json").read_text())
    assert after["inputs"]["model"] != before["inputs"]["model"]
    assert list(out.glob("results.superseded-*.json"))  # the old results are kept
    assert after["timings"]["fit_cache_hit"] == 0.0  # refitted on the new weights
    for name, old in caches.items():  # a new entry in each cache, none reused
        if name == "sweeps" and not engine:
            continue
        assert entries(cache / name) - old, name
    assert lls(out, "samples_jsonl_select_baseline.jsonl") != base_before
    assert lls(out, "samples_jsonl_select.jsonl") != steered_before

    # the same numbers as a run of the changed model on a fresh cache
    fresh = tmp_path / "fresh"
    fresh_cache = f"paths.cache_dir={tmp_path}/cache2"
    run(compose_run([*overrides, fresh_cache, f"paths.output_dir='{fresh}'"]))
    assert lls(fresh, "samples_jsonl_select_baseline.jsonl") == lls(
        out, "samples_jsonl_select_baseline.jsonl"
    )
    assert json.loads((fresh / "results.json").read_text())["metrics"] == after["metrics"]

    model, _ = load_model(str(model_dir), device="cpu")
    with pytest.raises(WeightsMismatch, match="other weights"):
        Steerer.load(steerer_before, model)
    Steerer.load(out / "steerer", model)  # the one fitted on these weights loads


def test_file_digest_covers_bytes_no_sample_would_read(tmp_path: Path) -> None:
    """A byte 1.5 MiB into a 6 MiB file (outside the first, middle and last MiB) counts."""
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    weights = model_dir / "model.safetensors"
    weights.write_bytes(bytes(6 << 20))
    (model_dir / "config.json").write_text("{}")
    index = tmp_path / "cache"
    first = directory_fingerprint(model_dir, index)
    with weights.open("r+b") as f:
        f.seek(3 << 19)
        f.write(b"\x01")
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert directory_fingerprint(model_dir, index) != first


def test_file_digests_are_remembered_by_path_size_and_mtime(tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(b"a" * 1000)
    old = path.stat().st_mtime_ns - 10 * 10**9  # settled: older than the racy window
    os.utime(path, ns=(old, old))
    index = tmp_path / "cache"
    digest = file_digest(path, index)
    recorded = json.loads((index / DIGEST_INDEX).read_text())
    assert recorded[str(path.resolve())][2] == digest
    # the index is what is read while size and mtime hold (proved by planting a value) ...
    recorded[str(path.resolve())][2] = "planted"
    (index / DIGEST_INDEX).write_text(json.dumps(recorded))
    assert file_digest(path, index) == "planted"
    # ... and a changed mtime reads the file again
    os.utime(path, ns=(old + 10**9, old + 10**9))
    assert file_digest(path, index) == digest
    # a damaged index is only a lost memo
    (index / DIGEST_INDEX).write_text("{not json")
    assert file_digest(path, index) == digest


def test_a_file_written_just_now_is_not_remembered(tmp_path: Path) -> None:
    """Two writes within one tick of the file system's clock can leave size and mtime
    equal: a digest of a file younger than the racy window is never kept (as git does)."""
    path = tmp_path / "w.bin"
    path.write_bytes(b"b" * 100)
    index = tmp_path / "cache"
    file_digest(path, index)
    assert str(path.resolve()) not in json.loads(
        (index / DIGEST_INDEX).read_text() if (index / DIGEST_INDEX).exists() else "{}"
    )
