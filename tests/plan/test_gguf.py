"""The GGUF plan is a consumer of the model description: its tensors are the spec's (layer, role) list named by
one role table, its hyperparameter keys carry the spec's values, and a checkpoint that lacks a tensor the config
implies is refused before anything is written. Byte-identity with llama.cpp is tests/oracle's job."""
from __future__ import annotations

import re

import pytest

from quantcli.errors import InputError, UnsupportedError
from quantcli.io.checkpoint import Checkpoint
from quantcli.models.base import adapter_for
from quantcli.models.spec import spec_from_config
from quantcli.plan.gguf import ROLE_TENSORS, SourceModel, gguf_tensor_name
from tests.fixtures.paths import model_path
from tests.models.test_families import LLAMA_CONFIG, gguf_metadata, gguf_specs, llama_tensors

# One small config per family, covering every role the HF layouts know (biases, q/k norms, post norms, fused
# projections, BERT's post-residual norms and embeddings).
FAMILY_CONFIGS = {
    "llama": {**LLAMA_CONFIG, "attention_bias": True, "mlp_bias": True},
    "qwen2": {**LLAMA_CONFIG, "architectures": ["Qwen2ForCausalLM"]},
    "qwen3": {**LLAMA_CONFIG, "architectures": ["Qwen3ForCausalLM"], "head_dim": 32},
    "gemma2": {**LLAMA_CONFIG, "architectures": ["Gemma2ForCausalLM"], "head_dim": 16, "query_pre_attn_scalar": 16,
               "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "sliding_window": 32,
               "tie_word_embeddings": False},
    "gemma3": {**LLAMA_CONFIG, "architectures": ["Gemma3ForCausalLM"], "head_dim": 16, "query_pre_attn_scalar": 16},
    "phi3": {**LLAMA_CONFIG, "architectures": ["Phi3ForCausalLM"]},
    "bert": {"architectures": ["BertModel"], "num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64,
             "num_attention_heads": 4, "vocab_size": 50, "max_position_embeddings": 64, "type_vocab_size": 2,
             "layer_norm_eps": 1e-12},
}


@pytest.mark.parametrize("family", sorted(FAMILY_CONFIGS))
def test_role_table_names_what_the_adapter_name_map_names(family: str) -> None:
    """The plan names tensors by role; the adapter's gguf-py name map reads checkpoints. Both must agree."""
    config = FAMILY_CONFIGS[family]
    spec, adapter = spec_from_config(config), adapter_for(config)
    assert spec.family == family
    for t in spec.tensors:
        if adapter.gguf_name(t.hf_name) is None:
            # llama.cpp's graph has no such tensor (gemma2's lm_head): the plan must drop it, not name it
            assert any(re.search(p, t.hf_name) for p in adapter.ignored), t.hf_name
            continue
        assert gguf_tensor_name(t.role, t.layer) == adapter.gguf_name(t.hf_name), (t.role, t.hf_name)


def test_every_layout_role_has_a_gguf_tensor() -> None:
    from quantcli.models import layout

    roles = {role for value in vars(layout).values() if isinstance(value, layout.HFLayout)
             for role in (*value.globals, *value.block)}
    assert roles <= set(ROLE_TENSORS), roles - set(ROLE_TENSORS)


def test_plan_tensors_carry_the_spec_role_and_layer() -> None:
    adapter = adapter_for(LLAMA_CONFIG)
    specs = {s.name: s for s in gguf_specs(adapter, llama_tensors())}
    assert (specs["blk.0.attn_k.weight"].role, specs["blk.0.attn_k.weight"].layer) == ("attn_k", 0)
    assert (specs["token_embd.weight"].role, specs["token_embd.weight"].layer) == ("tok_embd", None)
    assert specs["blk.0.attn_k.weight"].transform.describe() == "rope-permute(2 heads)"


def test_hyperparameter_keys_carry_the_spec_values() -> None:
    config = {**LLAMA_CONFIG, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6}
    meta = {kv.key: kv.value for kv in gguf_metadata(adapter_for(config))}
    spec = spec_from_config(config)
    assert meta["llama.context_length"] == spec.n_ctx_train == 4096
    assert meta["llama.attention.layer_norm_rms_epsilon"] == spec.norm_eps == 1e-6
    assert meta["llama.rope.freq_base"] == spec.rope.theta == 500000.0
    # head_dim is written only when config.json gives it, as llama.cpp's converter does
    assert "llama.attention.key_length" not in meta
    with_head_dim = {kv.key: kv.value for kv in gguf_metadata(adapter_for({**config, "head_dim": 16}))}
    assert with_head_dim["llama.attention.key_length"] == 16


def test_a_tensor_the_config_implies_must_be_in_the_checkpoint() -> None:
    tensors = llama_tensors()
    tensors.pop("model.layers.0.mlp.up_proj.weight")
    with pytest.raises(InputError, match=r"up_proj.*ffn_up, block 0"):
        gguf_specs(adapter_for(LLAMA_CONFIG), tensors)
    # a bias the config does not declare is still carried over: llama.cpp loads it when present
    extra = llama_tensors()
    extra["model.layers.0.self_attn.q_proj.bias"] = extra["model.norm.weight"]
    names = {s.name: s for s in gguf_specs(adapter_for(LLAMA_CONFIG), extra)}
    assert names["blk.0.attn_q.bias"].role is None and names["blk.0.attn_q.bias"].transform.describe()


def test_a_rope_scaling_the_description_does_not_know_is_refused_for_gguf_too() -> None:
    config = {**LLAMA_CONFIG, "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}
    with pytest.raises(UnsupportedError, match="dynamic"):
        gguf_specs(adapter_for(config), llama_tensors())


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny-llama", "tiny-qwen2", "tiny-qwen3", "tiny-gemma2", "tiny-gemma3",
                                   "tiny-phi3", "tiny-bert", "SmolLM2-135M-Instruct"])
def test_built_models_plan_every_described_tensor_once(model: str) -> None:
    source = SourceModel.open(Checkpoint.open(model_path(model)))
    described = {(t.role, t.layer) for t in source.spec.tensors}
    planned = [(s.role, s.layer) for s in source.specs if s.role is not None]
    assert len(planned) == len(set(planned))
    # gemma2's graph always reuses the token embedding, so its lm_head (if described) is the one tensor dropped
    assert set(planned) == described - ({("output", None)} if source.spec.family == "gemma2" else set())
    assert all(s.generated for s in source.specs if s.role is None)
