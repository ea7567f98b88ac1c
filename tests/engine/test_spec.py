"""The ModelSpec from config.json alone: hyperparameters, numerics and every tensor's role, HF name and shape.

The configs are small hand-written ones covering what the tiny test models do not (longrope, llama3 rope,
yarn, qwen2's pre-`layer_types` sliding windows, prefixed BERT classes). A cross-check ties the spec to the GGUF
side: every tensor the spec lists must have a GGUF name in the adapter's map, so the two descriptions of a family
cannot drift apart.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantcli.errors import InputError, UnsupportedError
from quantcli.models.base import adapter_for
from quantcli.models.spec import ModelSpec, model_spec, spec_from_config

LLAMA = {"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 96,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100, "max_position_embeddings": 128,
         "rms_norm_eps": 1e-5, "rope_theta": 500000.0}


def gguf_names_exist(config: dict, spec: ModelSpec) -> None:
    adapter = adapter_for(config)
    missing = [t.hf_name for t in spec.tensors if adapter.gguf_name(t.hf_name) is None]
    assert not missing, f"spec names without a GGUF name: {missing}"


def test_llama_hyperparameters_and_tensors() -> None:
    spec = spec_from_config(LLAMA)
    assert (spec.family, spec.n_layer, spec.hidden, spec.n_head, spec.n_head_kv, spec.head_dim) == \
        ("llama", 2, 64, 4, 2, 16)
    assert (spec.ffn, spec.vocab, spec.n_ctx_train, spec.norm_eps) == (96, 100, 128, 1e-5)
    assert spec.rope is not None and spec.rope.kind == "default" and spec.rope.theta == 500000.0 and spec.rope.dims == 16
    assert spec.attn_scale == pytest.approx(16 ** -0.5)
    assert not spec.tied_embeddings and spec.output_tensor() == spec.tensor("output")
    assert spec.tensor("attn_k", 1).shape == (32, 64) and spec.tensor("attn_out", 0).shape == (64, 64)
    assert spec.tensor("ffn_gate", 0).hf_name == "model.layers.0.mlp.gate_proj.weight"
    assert not spec.has("attn_q_bias", 0) and not spec.has("attn_q_norm", 0)
    # 3 globals + 9 per block
    assert len(spec.tensors) == 3 + 2 * 9
    gguf_names_exist(LLAMA, spec)


def test_spec_is_frozen() -> None:
    spec = spec_from_config(LLAMA)
    with pytest.raises(AttributeError):
        spec.hidden = 3  # type: ignore[misc]


def test_tied_llama_has_no_output_tensor() -> None:
    spec = spec_from_config({**LLAMA, "tie_word_embeddings": True})
    assert not spec.has("output") and spec.output_tensor() == spec.tensor("tok_embd")


def test_attention_bias_flag_adds_biases() -> None:
    spec = spec_from_config({**LLAMA, "attention_bias": True, "mlp_bias": True})
    for role in ("attn_q_bias", "attn_k_bias", "attn_v_bias", "attn_out_bias", "ffn_gate_bias", "ffn_down_bias"):
        assert spec.has(role, 1), role
    assert spec.tensor("attn_k_bias", 0).shape == (32,)


def test_llama3_rope_defaults_fill_missing_fields() -> None:
    spec = spec_from_config({**LLAMA, "rope_scaling": {"rope_type": "llama3", "factor": 32.0}})
    assert spec.rope is not None
    assert (spec.rope.kind, spec.rope.factor, spec.rope.low_freq_factor, spec.rope.high_freq_factor,
            spec.rope.original_context) == ("llama3", 32.0, 1.0, 4.0, 8192)


def test_linear_and_yarn_rope() -> None:
    linear = spec_from_config({**LLAMA, "rope_scaling": {"type": "linear", "factor": 4.0}}).rope
    assert linear is not None and (linear.kind, linear.factor) == ("linear", 4.0)
    yarn = spec_from_config({**LLAMA, "rope_scaling": {"rope_type": "yarn", "factor": 4.0,
                                                       "original_max_position_embeddings": 32}}).rope
    assert yarn is not None and yarn.kind == "yarn" and yarn.original_context == 32
    assert yarn.attention_factor == pytest.approx(0.1 * __import__("math").log(4.0) + 1.0)


def test_unknown_rope_scaling_is_refused() -> None:
    with pytest.raises(UnsupportedError, match="dynamic"):
        spec_from_config({**LLAMA, "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}})


def test_heads_must_share_kv_heads_evenly() -> None:
    with pytest.raises(InputError, match="is not a multiple of num_key_value_heads"):
        spec_from_config({**LLAMA, "num_key_value_heads": 3})


def test_mistral_window_applies_to_every_layer() -> None:
    spec = spec_from_config({**LLAMA, "architectures": ["MistralForCausalLM"], "sliding_window": 16})
    assert spec.sliding_window == 16 and spec.sliding_layers == (True, True)
    assert spec_from_config({**LLAMA, "sliding_window": None}).sliding_layers == (False, False)


def test_qwen2_biases_and_old_style_window() -> None:
    cfg = {**LLAMA, "architectures": ["Qwen2ForCausalLM"], "num_hidden_layers": 3, "use_sliding_window": True,
           "sliding_window": 8, "max_window_layers": 1}
    spec = spec_from_config(cfg)
    assert spec.sliding_layers == (False, True, True) and spec.sliding_window == 8
    assert spec.has("attn_q_bias", 0) and not spec.has("attn_out_bias", 0)
    off = spec_from_config({**cfg, "use_sliding_window": False})
    assert off.sliding_layers == (False, False, False) and off.sliding_window is None
    gguf_names_exist(cfg, spec)


def test_qwen3_qk_norms() -> None:
    cfg = {**LLAMA, "architectures": ["Qwen3ForCausalLM"], "head_dim": 32}
    spec = spec_from_config(cfg)
    assert spec.tensor("attn_q_norm", 1).shape == (32,) and spec.tensor("attn_q", 0).shape == (128, 64)
    assert not spec.has("attn_q_bias", 0)
    gguf_names_exist(cfg, spec)


def test_gemma2_numerics() -> None:
    cfg = {**LLAMA, "architectures": ["Gemma2ForCausalLM"], "head_dim": 16, "query_pre_attn_scalar": 16,
           "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "sliding_window": 32}
    cfg.pop("rms_norm_eps")
    with pytest.raises(InputError, match="rms_norm_eps"):
        spec_from_config(cfg)
    spec = spec_from_config({**cfg, "rms_norm_eps": 1e-6})
    assert spec.numerics.norm_weight_offset == 1.0 and spec.numerics.embed_scale == "sqrt_hidden"
    assert (spec.attn_softcap, spec.final_softcap) == (50.0, 30.0)
    assert spec.sliding_layers == (True, False)  # period 2 without layer_types
    assert spec.tied_embeddings  # gemma's default
    assert spec.tensor("ffn_norm", 0).hf_name == "model.layers.0.pre_feedforward_layernorm.weight"
    assert spec.tensor("post_attn_norm", 0).hf_name == "model.layers.0.post_attention_layernorm.weight"
    gguf_names_exist({**cfg, "rms_norm_eps": 1e-6}, spec)


def test_gemma3_local_rope_and_scalar() -> None:
    cfg = {**LLAMA, "architectures": ["Gemma3ForCausalLM"], "head_dim": 32, "query_pre_attn_scalar": 32,
           "rope_scaling": {"rope_type": "linear", "factor": 8.0}, "rope_local_base_freq": 10000.0,
           "layer_types": ["sliding_attention", "full_attention"], "sliding_window": 32}
    spec = spec_from_config(cfg)
    assert spec.rope is not None and spec.rope.kind == "linear" and spec.rope.theta == 500000.0
    assert spec.rope_local is not None and (spec.rope_local.kind, spec.rope_local.theta) == ("default", 10000.0)
    assert spec.attn_scale == pytest.approx(32 ** -0.5) and spec.numerics.qk_norm  # not 1/sqrt(hidden / heads)
    gguf_names_exist(cfg, spec)


def test_phi3_fused_and_longrope() -> None:
    cfg = {**LLAMA, "architectures": ["Phi3ForCausalLM"], "max_position_embeddings": 512,
           "original_max_position_embeddings": 128, "partial_rotary_factor": 0.5,
           "rope_scaling": {"type": "longrope", "long_factor": [2.0] * 4, "short_factor": [1.0] * 4}}
    spec = spec_from_config(cfg)
    assert spec.fused_qkv and spec.fused_gate_up
    assert spec.tensor("attn_qkv", 0).shape == (64 + 2 * 32, 64) and spec.tensor("ffn_gate_up", 1).shape == (192, 64)
    rope = spec.rope
    assert rope is not None and rope.kind == "longrope" and rope.dims == 8 and rope.original_context == 128
    assert rope.attention_factor == pytest.approx((1 + __import__("math").log(4.0) / __import__("math").log(128)) ** 0.5)
    gguf_names_exist(cfg, spec)
    with pytest.raises(InputError, match="long_factor"):
        spec_from_config({**cfg, "rope_scaling": {"type": "longrope", "long_factor": [2.0] * 3,
                                                  "short_factor": [1.0] * 3}})


def test_bert_spec_and_pooling(tmp_path: Path) -> None:
    cfg = {"architectures": ["BertModel"], "num_hidden_layers": 1, "hidden_size": 32, "intermediate_size": 64,
           "num_attention_heads": 2, "vocab_size": 50, "max_position_embeddings": 40, "type_vocab_size": 2,
           "layer_norm_eps": 1e-12}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    plain = model_spec(tmp_path)
    assert plain.is_encoder and plain.rope is None and plain.post_norm_block and plain.pooling is None
    assert plain.tensor("pos_embd").shape == (40, 32) and plain.tensor("type_embd").shape == (2, 32)
    assert plain.has("ffn_up_bias", 0) and not plain.has("ffn_gate", 0) and plain.output_tensor() is None
    gguf_names_exist(cfg, plain)
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    (tmp_path / "modules.json").write_text(json.dumps([
        {"path": "", "type": "sentence_transformers.models.Transformer"},
        {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    st = model_spec(tmp_path)
    assert (st.pooling, st.normalize) == ("cls", True)


def test_missing_config_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="config.json"):
        model_spec(tmp_path)
