"""llama.cpp control vectors without llama.cpp: the GGUF file sadi writes (read back with
gguf, llama.cpp's own reader), the import as CAA, and the refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sadi.llamacpp.__main__ import main as cli
from sadi.llamacpp.control_vector import (
    ControlVectorError,
    export_control_vector,
    import_control_vector,
    read_control_vector,
)
from sadi.steerers.caa import CAA
from sadi.steerers.iti import ITI
from tests.conftest import PAIRS, byte_tokenizer, make_tiny


def _caa(layer: int = 2, multiplier: float = 3.0) -> tuple[torch.nn.Module, CAA]:
    torch.manual_seed(0)
    model = make_tiny("llama")
    caa = CAA(layer=layer, multiplier=multiplier, positions="all", progress=False)
    return model, caa.fit(model, byte_tokenizer(), PAIRS)


def test_export_writes_llama_cpp_s_layout_and_import_gives_the_same_caa(tmp_path: Path) -> None:
    import gguf

    model, caa = _caa()
    path = export_control_vector(caa, tmp_path / "caa.gguf")
    reader = gguf.GGUFReader(str(path))
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "controlvector"
    assert [t.name for t in reader.tensors] == ["direction.2"]
    vectors, hint = read_control_vector(path)
    assert hint == "llama"
    # the multiplier is part of the vector: llama-server --control-vector reproduces the run
    np.testing.assert_array_equal(vectors[2].numpy(), (3.0 * caa.vector()).numpy())
    back = import_control_vector(path, model)
    assert (back.layer, back.multiplier, back.positions) == (2, 1.0, "all")
    x = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        with caa.apply(model):
            want = model(input_ids=x).logits
        with back.apply(model):
            got = model(input_ids=x).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_refusals(tmp_path: Path) -> None:
    model, caa = _caa()
    with pytest.raises(ControlVectorError, match="does not add one vector per layer"):
        iti = ITI(k=2, progress=False).fit(model, byte_tokenizer(), PAIRS)
        export_control_vector(iti, tmp_path / "iti.gguf")
    with pytest.raises(ControlVectorError, match="layer 0"):
        export_control_vector(caa.with_params(layer=0), tmp_path / "l0.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf")
    with pytest.raises(ControlVectorError, match="not a GGUF file"):
        read_control_vector(tmp_path / "junk.gguf")
    path = export_control_vector(caa, tmp_path / "caa.gguf")
    other = make_tiny("gpt2")  # another width? same 32: check the layer instead
    with pytest.raises(ControlVectorError, match="no direction.1"):
        import_control_vector(path, other, layer=1)


def test_a_multi_layer_vector_is_imported_one_layer_at_a_time(tmp_path: Path) -> None:
    import gguf

    model, caa = _caa()
    path = tmp_path / "two.gguf"
    writer = gguf.GGUFWriter(str(path), "controlvector")
    writer.add_string("controlvector.model_hint", "llama")
    writer.add_uint32("controlvector.layer_count", 2)
    for layer in (1, 2):
        writer.add_tensor(f"direction.{layer}", np.full(32, float(layer), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ControlVectorError, match=r"steers layers \[1, 2\] at once"):
        import_control_vector(path, model)
    caa1 = import_control_vector(path, model, layer=1, scale=2.0)
    assert caa1.layer == 1 and caa1.multiplier == 2.0
    assert torch.equal(caa1.vector(), torch.full((32,), 1.0))


def test_cli_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, caa = _caa()
    caa.save(tmp_path / "run" / "steerer")
    assert cli(["export", str(tmp_path / "run"), str(tmp_path / "x.gguf")]) == 0
    assert "llama-server --control-vector" in capsys.readouterr().out
    assert cli(["export", str(tmp_path / "nothing"), str(tmp_path / "y.gguf")]) == 2
    assert "holds no steerer" in capsys.readouterr().err
