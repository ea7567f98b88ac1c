"""config.json values of the wrong type or range are errors naming the field, read through one typed accessor;
config values are checked against the tensors actually present before anything is sized by them."""
from __future__ import annotations

import pytest

from quantcli.errors import InputError
from quantcli.models.base import adapter_for
from tests.models.test_families import LLAMA_CONFIG, gguf_specs, infos, llama_tensors, metadata


def llama(**changes: object):  # type: ignore[no-untyped-def]
    return adapter_for({**LLAMA_CONFIG, **changes})


@pytest.mark.parametrize("key, value, message", [
    ("num_attention_heads", "4", "num_attention_heads is '4' (a string); it must be an integer"),
    ("num_attention_heads", [4], "num_attention_heads is [4] (a list)"),
    ("num_attention_heads", True, "num_attention_heads is True (a boolean)"),
    ("num_attention_heads", 0, "num_attention_heads is 0; it must be from 1"),
    ("num_key_value_heads", 0, "num_key_value_heads is 0"),
    ("num_key_value_heads", 3, "not a multiple of num_key_value_heads (3)"),
    ("hidden_size", 4.5, "hidden_size is 4.5 (a number)"),
    ("max_position_embeddings", 2**40, "max_position_embeddings is 1099511627776; it must be from 1 to 4294967295"),
    ("max_position_embeddings", -1, "max_position_embeddings is -1"),
    ("head_dim", 0, "head_dim is 0"),
    ("rms_norm_eps", "1e-5", "rms_norm_eps is '1e-5' (a string); it must be a number"),
    ("rms_norm_eps", -1.0, "rms_norm_eps is -1.0; it must be a finite positive number"),
    ("rope_theta", {"x": 1}, "rope_theta is {'x': 1} (an object)"),
    ("vocab_size", "big", "vocab_size is 'big' (a string)"),
    ("rope_scaling", {"rope_type": "linear", "factor": "8"}, "rope_scaling.factor is '8' (a string)"),
])
def test_wrong_config_values_name_the_field(key: str, value: object, message: str) -> None:
    with pytest.raises(InputError) as info:
        adapter = llama(**{key: value})
        metadata(adapter)
        gguf_specs(adapter, llama_tensors())
    assert message in str(info.value) and "config.json" in str(info.value)


def test_num_hidden_layers_as_a_string() -> None:
    with pytest.raises(InputError, match="num_hidden_layers is '2' .a string."):
        llama(num_hidden_layers="2")


def test_integral_floats_are_integers() -> None:
    assert metadata(llama(hidden_size=64.0, max_position_embeddings=128.0))["llama.context_length"] == 128


@pytest.mark.parametrize("value", ["no", "false", 0, 1, [], None])
def test_tie_word_embeddings_must_be_a_boolean(value: object) -> None:
    adapter = llama(tie_word_embeddings=value)
    if value is None:  # absent: untied, lm_head kept
        assert "output.weight" in {s.name for s in gguf_specs(adapter, llama_tensors())}
        return
    with pytest.raises(InputError, match="tie_word_embeddings is .* it must be true or false"):
        gguf_specs(adapter, llama_tensors())


def test_tied_embeddings_still_drop_lm_head() -> None:
    assert "output.weight" not in {s.name for s in gguf_specs(llama(tie_word_embeddings=True), llama_tensors())}


@pytest.mark.parametrize("names", [[{}], [1], "LlamaForCausalLM", []])
def test_architectures_must_be_a_list_of_names(names: object) -> None:
    with pytest.raises(InputError, match="'architectures' list of names"):
        adapter_for({**LLAMA_CONFIG, "architectures": names})


def test_block_count_is_checked_before_the_name_map_is_built() -> None:
    adapter = llama(num_hidden_layers=10**9)   # the name map for 1e9 blocks would take gigabytes
    with pytest.raises(InputError, match="num_hidden_layers is 1000000000 but the checkpoint's tensors hold 1 blocks"):
        adapter.check_block_count(llama_tensors())
    assert "name_map" not in vars(adapter)


@pytest.mark.parametrize("changes, tensor, message", [
    ({"vocab_size": 101}, None, "vocab_size is 101 but the token embedding 'model.embed_tokens.weight' has 100 rows"),
    ({"vocab_size": 10**9}, None, "vocab_size is 1000000000"),
    ({"intermediate_size": 128}, None, "'model.layers.0.mlp.down_proj.weight': its shape is [64, 96] but the config implies [64, 128]"),
    ({"num_key_value_heads": 4}, None, "'model.layers.0.self_attn.k_proj.weight'"),
    ({}, ("model.norm.weight", (63,)), "'model.norm.weight': its shape is [63] but the config implies [64]"),
])
def test_tensor_shapes_must_agree_with_the_config(changes: dict, tensor: tuple | None, message: str) -> None:
    shapes = {k: v.shape for k, v in llama_tensors().items()}
    if tensor is not None:
        shapes[tensor[0]] = tensor[1]
    adapter = llama(**changes)
    with pytest.raises(InputError) as info:
        adapter.check_shapes(gguf_specs(adapter, infos(shapes)))
    assert message in str(info.value)


def test_a_consistent_model_passes_the_shape_check() -> None:
    adapter = llama()
    adapter.check_shapes(gguf_specs(adapter, llama_tensors()))


@pytest.mark.parametrize("id2label", [{"x": "a"}, ["a", "b"], {"-1": "a"}])
def test_classifier_labels_need_numeric_ids(id2label: object) -> None:
    adapter = adapter_for({"architectures": ["BertForSequenceClassification"], "num_hidden_layers": 1,
                           "id2label": id2label})
    with pytest.raises(InputError, match="id2label must map label ids"):
        adapter.labels()
