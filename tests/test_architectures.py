import pytest
import torch

from sadi.core.architectures import ARCHITECTURES, architecture_of, get_module, model_shape, site
from sadi.core.hooks import LayerHook, hooked
from tests.conftest import make_tiny


def test_every_family_has_a_tiny_model(family: str) -> None:
    model = make_tiny(family)
    assert architecture_of(model).family == family


def test_table_covers_required_families() -> None:
    assert {"llama", "mistral", "qwen2", "gemma3", "gpt2", "bloom", "falcon"} <= set(ARCHITECTURES)


def test_shapes(family: str) -> None:
    shape = model_shape(make_tiny(family))
    assert shape.n_layers == 3 and shape.n_heads == 4
    assert shape.head_dim == (16 if family == "gemma3" else 8)
    assert shape.d_model == 32
    assert shape.grid("head") == (3, 4)
    assert shape.grid("neuron") == (3, shape.d_ff)
    assert shape.grid("residual") == (3, 32)


@pytest.mark.parametrize("component", ["head", "neuron", "neuron_down", "hidden", "residual"])
def test_every_component_reaches_a_tensor_of_the_grid_width(family: str, component: str) -> None:
    model = make_tiny(family)
    shape = model_shape(model)
    seen: dict[int, tuple[int, ...]] = {}

    def grab(layer: int, act: torch.Tensor) -> None:
        seen[layer] = tuple(act.shape)

    hooks = [LayerHook(i, grab) for i in range(shape.n_layers)]
    with hooked(model, site(architecture_of(model), component), hooks):
        model(torch.tensor([[5, 6, 7, 8, 9]]))
    assert seen == {i: (1, 5, shape.width(component)) for i in range(3)}


def test_unknown_architecture_error() -> None:
    model = make_tiny("llama")
    model.config.model_type = "lama"
    with pytest.raises(ValueError, match=r"unsupported architecture model_type='lama'.*llama"):
        architecture_of(model)


def test_unknown_component_error() -> None:
    with pytest.raises(ValueError, match="unknown component 'heads'.*'head'"):
        site(ARCHITECTURES["llama"], "heads")


def test_missing_module_error_names_children() -> None:
    model = make_tiny("llama")
    with pytest.raises(AttributeError, match="has no 'mlpp'"):
        get_module(model.model.layers[0], "mlpp.act_fn")


def test_component_the_model_lacks_is_named() -> None:
    from sadi.core.architectures import model_site

    model = make_tiny("llama")
    for layer in model.model.layers:
        del layer.mlp.act_fn
    with pytest.raises(ValueError, match="component 'neuron' is not available.*'mlp.act_fn'"):
        model_site(model, "neuron")
    assert model_site(model, "head").module == "self_attn.o_proj"
