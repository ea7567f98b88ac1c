"""Architecture adapters from config and tensor names alone: names, transforms, metadata, generated tensors.

The real conversions (and llama.cpp running them) are in tests/interop; these pin down each family's rules on
small hand-written configs, including the variants the tiny test models do not cover (multimodal Gemma 3,
Phi-3 longrope, Llama 3.1 rope scaling, BERT task heads).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFValueType, PoolingType

from quantcli.errors import UnsupportedError
from quantcli.io.safetensors import TensorInfo
from quantcli.models.base import Architecture, Numerics, TensorSpec, adapter_for, supported_architectures
from quantcli.io.gguf_metadata import MetaKV
from quantcli.models.spec import spec_from_adapter
from quantcli.models.transforms import AddOne, Constant, Llama3RopeFactors, PermuteRope
from quantcli.plan.gguf import gguf_tensors, hparams_metadata


def gguf_specs(adapter: Architecture, tensors: dict[str, TensorInfo]) -> list[TensorSpec]:
    """The GGUF tensors the plan makes of `tensors`, through the model description of the adapter's config."""
    return gguf_tensors(spec_from_adapter(adapter), adapter, tensors)


def gguf_metadata(adapter: Architecture) -> list[MetaKV]:
    return hparams_metadata(spec_from_adapter(adapter), adapter)


def infos(shapes: dict[str, tuple[int, ...]]) -> dict[str, TensorInfo]:
    out = {}
    for name, shape in shapes.items():
        n = int(np.prod(shape))
        out[name] = TensorInfo(name, "F32", shape, Path("model.safetensors"), 0, 4 * n)
    return out


def metadata(adapter) -> dict[str, object]:  # type: ignore[no-untyped-def]
    return {kv.key: kv.value for kv in gguf_metadata(adapter)}


def decoder_block(prefix: str, hidden: int, q_rows: int, kv_rows: int, ff: int, layer: int) -> dict[str, tuple[int, ...]]:
    p = f"{prefix}layers.{layer}."
    return {
        p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,),
        p + "self_attn.q_proj.weight": (q_rows, hidden), p + "self_attn.k_proj.weight": (kv_rows, hidden),
        p + "self_attn.v_proj.weight": (kv_rows, hidden), p + "self_attn.o_proj.weight": (hidden, q_rows),
        p + "mlp.gate_proj.weight": (ff, hidden), p + "mlp.up_proj.weight": (ff, hidden),
        p + "mlp.down_proj.weight": (hidden, ff),
    }


LLAMA_CONFIG = {"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 1, "hidden_size": 64,
                "intermediate_size": 96, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100,
                "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 500000.0}


def llama_tensors() -> dict[str, TensorInfo]:
    return infos({"model.embed_tokens.weight": (100, 64), "model.norm.weight": (64,), "lm_head.weight": (100, 64),
                  **decoder_block("model.", 64, 64, 32, 96, 0)})


# ---- registry ----------------------------------------------------------------------------------------------

def test_every_requested_family_is_registered() -> None:
    for name in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                 "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Gemma3ForConditionalGeneration", "Phi3ForCausalLM",
                 "BertModel", "BertForMaskedLM", "BertForSequenceClassification"):
        assert name in supported_architectures()


def test_numerics_reject_values_the_engine_would_not_know() -> None:
    with pytest.raises(ValueError, match="activation"):
        Numerics(activation="swish")


def test_unknown_architecture_lists_the_supported_ones() -> None:
    with pytest.raises(UnsupportedError) as err:
        adapter_for({"architectures": ["FalconForCausalLM"], "num_hidden_layers": 1})
    assert "FalconForCausalLM" in str(err.value)
    assert "Qwen3ForCausalLM" in str(err.value) and "BertModel" in str(err.value)


# ---- llama / mistral -----------------------------------------------------------------------------------------

def test_mistral_is_the_llama_graph_and_ignores_its_sliding_window() -> None:
    adapter = adapter_for({**LLAMA_CONFIG, "architectures": ["MistralForCausalLM"], "sliding_window": 4096})
    assert adapter.arch_name == "llama"
    assert not any("sliding_window" in key for key in metadata(adapter))


def test_llama_permutes_q_and_k_with_their_own_head_counts() -> None:
    specs = {s.name: s for s in gguf_specs(adapter_for(LLAMA_CONFIG), llama_tensors())}
    assert specs["blk.0.attn_q.weight"].transform == PermuteRope(4)
    assert specs["blk.0.attn_k.weight"].transform == PermuteRope(2)
    assert specs["blk.0.attn_v.weight"].transform.describe() == ""
    assert "rope_freqs.weight" not in specs


def reference_llama3_factors(theta: float, dim: int, factor: float, low: float, high: float, ctx: int) -> np.ndarray:
    """Llama 3.1's published scaling rule, evaluated in float64 (the model card's formula)."""
    out = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi * theta ** (i / dim)
        if wavelen < ctx / high:
            out.append(1.0)
        elif wavelen > ctx / low:
            out.append(factor)
        else:
            smooth = (ctx / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out)


def test_llama3_rope_scaling_becomes_a_generated_rope_freqs_tensor() -> None:
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    config = {**LLAMA_CONFIG, "hidden_size": 2048, "num_attention_heads": 16, "head_dim": 128, "rope_scaling": scaling}
    adapter = adapter_for(config)
    (spec,) = [s for s in gguf_specs(adapter, llama_tensors()) if s.name == "rope_freqs.weight"]
    assert spec.sources == () and spec.generated and spec.shape == (64,)
    values = spec.transform.apply([])
    assert values.dtype == np.float32 and values.shape == (64,)
    expected = reference_llama3_factors(500000.0, 128, 8.0, 1.0, 4.0, 8192)
    np.testing.assert_allclose(values, expected, rtol=1e-6)
    # all three regimes occur: kept high frequencies, fully scaled low ones, and the blended band
    assert values[0] == 1.0 and values[-1] == 8.0 and ((values > 1.0) & (values < 8.0)).any()
    # no scaling-type key: llama.cpp takes llama 3 scaling from the tensor alone
    assert not any("rope.scaling" in key for key in metadata(adapter))


def test_llama3_rope_factors_match_llama_cpp_converter_arithmetic() -> None:
    torch = pytest.importorskip("torch")
    # llama.cpp's converter computes the table with float32 torch tensors; ours may differ by one ulp where
    # torch's pow rounds differently, never more.
    theta, dim, factor, low, high, ctx = 500000.0, 128, 32.0, 1.0, 4.0, 8192
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    ref = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < ctx / high:
            ref.append(1.0)
        elif wavelen > ctx / low:
            ref.append(factor)
        else:
            smooth = (ctx / wavelen - low) / (high - low)
            ref.append(float(1 / ((1 - smooth) / factor + smooth)))
    ours = Llama3RopeFactors(dim, theta, factor, low, high, ctx).apply([])
    ulps = np.abs(ours.view(np.int32).astype(np.int64) - np.asarray(ref, dtype=np.float32).view(np.int32))
    assert ulps.max() <= 1


# ---- qwen ----------------------------------------------------------------------------------------------------

def test_qwen2_keeps_hf_row_order_and_maps_biases() -> None:
    config = {**LLAMA_CONFIG, "architectures": ["Qwen2ForCausalLM"], "tie_word_embeddings": True}
    tensors = llama_tensors()
    tensors.pop("lm_head.weight")
    tensors.update(infos({"model.layers.0.self_attn.q_proj.bias": (64,), "model.layers.0.self_attn.k_proj.bias": (32,),
                          "model.layers.0.self_attn.v_proj.bias": (32,)}))
    adapter = adapter_for(config)
    specs = {s.name: s for s in gguf_specs(adapter, tensors)}
    assert adapter.arch_name == "qwen2" and adapter.numerics.rope == "neox"
    assert specs["blk.0.attn_q.bias"].sources == ("model.layers.0.self_attn.q_proj.bias",)
    assert all(s.transform.describe() == "" for s in specs.values())
    assert "output.weight" not in specs


def test_headless_qwen2_model_gets_its_prefix_and_pooling(tmp_path: Path) -> None:
    (tmp_path / "modules.json").write_text(json.dumps([{"idx": 1, "name": "1", "path": "1_Pooling",
                                                        "type": "sentence_transformers.models.Pooling"}]))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_lasttoken": True}))
    adapter = adapter_for({**LLAMA_CONFIG, "architectures": ["Qwen2Model"]}, tmp_path)
    bare = {"embed_tokens.weight": (100, 64), "norm.weight": (64,), **decoder_block("", 64, 64, 32, 96, 0),
            "layers.0.self_attn.q_proj.bias": (64,), "layers.0.self_attn.k_proj.bias": (32,),
            "layers.0.self_attn.v_proj.bias": (32,)}
    specs = {s.name: s for s in gguf_specs(adapter, infos(bare))}
    assert {"token_embd.weight", "output_norm.weight", "blk.0.attn_q.bias"} <= set(specs)
    assert specs["token_embd.weight"].sources == ("embed_tokens.weight",) and "output.weight" not in specs
    assert metadata(adapter)["qwen2.pooling_type"] == int(PoolingType.LAST)


def test_qwen3_maps_per_head_norms_and_writes_head_dim() -> None:
    config = {**LLAMA_CONFIG, "architectures": ["Qwen3ForCausalLM"], "head_dim": 32}
    tensors = infos({**{k: v.shape for k, v in llama_tensors().items()},
                     "model.layers.0.self_attn.q_norm.weight": (32,), "model.layers.0.self_attn.k_norm.weight": (32,)})
    adapter = adapter_for(config)
    names = {s.name for s in gguf_specs(adapter, tensors)}
    assert {"blk.0.attn_q_norm.weight", "blk.0.attn_k_norm.weight"} <= names
    meta = metadata(adapter)
    assert meta["qwen3.attention.key_length"] == 32 and meta["qwen3.attention.value_length"] == 32
    assert adapter.numerics.qk_norm


# ---- gemma ---------------------------------------------------------------------------------------------------

GEMMA2_CONFIG = {"architectures": ["Gemma2ForCausalLM"], "num_hidden_layers": 2, "hidden_size": 64,
                 "intermediate_size": 96, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
                 "query_pre_attn_scalar": 16, "vocab_size": 100, "max_position_embeddings": 128,
                 "rms_norm_eps": 1e-6, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
                 "sliding_window": 32, "layer_types": ["sliding_attention", "full_attention"],
                 "tie_word_embeddings": False}


def gemma_tensors(prefix: str = "model.", layers: int = 2, qk_norm: bool = False) -> dict[str, TensorInfo]:
    shapes: dict[str, tuple[int, ...]] = {prefix + "embed_tokens.weight": (100, 64), prefix + "norm.weight": (64,)}
    for i in range(layers):
        shapes.update(decoder_block(prefix, 64, 64, 32, 96, i))
        shapes[f"{prefix}layers.{i}.pre_feedforward_layernorm.weight"] = (64,)
        shapes[f"{prefix}layers.{i}.post_feedforward_layernorm.weight"] = (64,)
        if qk_norm:
            shapes[f"{prefix}layers.{i}.self_attn.q_norm.weight"] = (16,)
            shapes[f"{prefix}layers.{i}.self_attn.k_norm.weight"] = (16,)
    return infos(shapes)


def test_gemma2_adds_one_to_every_norm_and_drops_lm_head() -> None:
    tensors = gemma_tensors()
    tensors.update(infos({"lm_head.weight": (100, 64)}))
    specs = {s.name: s for s in gguf_specs(adapter_for(GEMMA2_CONFIG), tensors)}
    norms = [n for n in specs if n.endswith("norm.weight")]
    assert set(norms) >= {"blk.0.attn_norm.weight", "blk.0.post_attention_norm.weight", "blk.0.ffn_norm.weight",
                          "blk.0.post_ffw_norm.weight", "output_norm.weight"}
    assert all(isinstance(specs[n].transform, AddOne) for n in norms)
    assert not any(isinstance(s.transform, AddOne) for n, s in specs.items() if n not in norms)
    assert "output.weight" not in specs
    np.testing.assert_array_equal(AddOne().apply([np.array([-1.0, 0.0, 0.5], np.float32)]), [0.0, 1.0, 1.5])


def test_gemma2_metadata_has_softcaps_window_and_layer_pattern() -> None:
    meta = {kv.key: kv for kv in gguf_metadata(adapter_for(GEMMA2_CONFIG))}
    assert meta["gemma2.attn_logit_softcapping"].value == 50.0
    assert meta["gemma2.final_logit_softcapping"].value == 30.0
    assert meta["gemma2.attention.sliding_window"].value == 32
    pattern = meta["gemma2.attention.sliding_window_pattern"]
    assert pattern.value == [True, False] and pattern.subtype == GGUFValueType.BOOL


def test_gemma2_refuses_a_query_scale_llama_cpp_cannot_express() -> None:
    with pytest.raises(UnsupportedError, match="query_pre_attn_scalar"):
        adapter_for({**GEMMA2_CONFIG, "query_pre_attn_scalar": 24})
    # the 46-block 27B model is scaled by hidden / heads, which llama.cpp knows
    adapter_for({**GEMMA2_CONFIG, "num_hidden_layers": 46, "query_pre_attn_scalar": 16, "layer_types": None})


def test_gemma2_needs_both_softcaps() -> None:
    with pytest.raises(UnsupportedError, match="final_logit_softcapping"):
        gguf_metadata(adapter_for({**GEMMA2_CONFIG, "final_logit_softcapping": None}))


def test_gemma3_multimodal_checkpoint_converts_its_text_half_with_defaults() -> None:
    # the shape of a released Gemma 3 4B config: most text hyperparameters left to transformers' defaults
    config = {"architectures": ["Gemma3ForConditionalGeneration"], "vision_config": {"hidden_size": 1152},
              "text_config": {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 7,
                              "model_type": "gemma3_text", "head_dim": 16, "query_pre_attn_scalar": 16,
                              "num_attention_heads": 4, "num_key_value_heads": 2, "sliding_window": 32,
                              "rope_scaling": {"factor": 8.0, "rope_type": "linear"}}}
    tensors = gemma_tensors("language_model.model.", layers=7, qk_norm=True)
    tensors.update(infos({"vision_tower.vision_model.embeddings.patch_embedding.weight": (8, 3, 4, 4),
                          "multi_modal_projector.mm_input_projection_weight": (8, 64),
                          "multi_modal_projector.mm_soft_emb_norm.weight": (8,)}))
    adapter = adapter_for(config)
    specs = {s.name: s for s in gguf_specs(adapter, tensors)}
    assert adapter.arch_name == "gemma3"
    assert not any(src.startswith(("vision_tower", "multi_modal")) for s in specs.values() for src in s.sources)
    assert specs["blk.6.attn_q_norm.weight"].sources == ("language_model.model.layers.6.self_attn.q_norm.weight",)
    assert isinstance(specs["blk.6.attn_q_norm.weight"].transform, AddOne)
    meta = metadata(adapter)
    assert meta["gemma3.context_length"] == 131072 and meta["gemma3.rope.freq_base"] == 1_000_000.0
    assert meta["gemma3.rope.freq_base_swa"] == 10_000.0
    assert meta["gemma3.rope.scaling.type"] == "linear" and meta["gemma3.rope.scaling.factor"] == 8.0
    # five sliding layers, then a global one
    assert meta["gemma3.attention.sliding_window_pattern"] == [True] * 5 + [False, True]
    assert "gemma3.final_logit_softcapping" not in meta and "gemma3.attn_logit_softcapping" not in meta


def test_gemma3_without_sliding_layers_writes_no_window() -> None:
    config = {**GEMMA2_CONFIG, "architectures": ["Gemma3ForCausalLM"], "attn_logit_softcapping": None,
              "final_logit_softcapping": None, "layer_types": ["full_attention", "full_attention"]}
    meta = metadata(adapter_for(config))
    assert not any("sliding_window" in key or "freq_base_swa" in key for key in meta)


def test_gemma3_reads_transformers5_rope_parameters() -> None:
    config = {**GEMMA2_CONFIG, "architectures": ["Gemma3ForCausalLM"], "final_logit_softcapping": None,
              "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 2_000_000.0},
                                  "sliding_attention": {"rope_type": "default", "rope_theta": 20_000.0}}}
    meta = metadata(adapter_for(config))
    assert meta["gemma3.rope.freq_base"] == 2_000_000.0 and meta["gemma3.rope.freq_base_swa"] == 20_000.0


# ---- phi3 ----------------------------------------------------------------------------------------------------

PHI3_CONFIG = {"architectures": ["Phi3ForCausalLM"], "num_hidden_layers": 1, "hidden_size": 64,
               "intermediate_size": 96, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100,
               "max_position_embeddings": 4096, "original_max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
               "rope_theta": 10000.0, "sliding_window": 2047}


def phi3_tensors() -> dict[str, TensorInfo]:
    return infos({"model.embed_tokens.weight": (100, 64), "model.norm.weight": (64,), "lm_head.weight": (100, 64),
                  "model.layers.0.input_layernorm.weight": (64,),
                  "model.layers.0.post_attention_layernorm.weight": (64,),
                  "model.layers.0.self_attn.qkv_proj.weight": (64 + 2 * 32, 64),
                  "model.layers.0.self_attn.o_proj.weight": (64, 64),
                  "model.layers.0.mlp.gate_up_proj.weight": (2 * 96, 64),
                  "model.layers.0.mlp.down_proj.weight": (64, 96)})


def test_phi3_keeps_fused_projections_as_llama_cpp_expects() -> None:
    adapter = adapter_for(PHI3_CONFIG)
    specs = {s.name: s for s in gguf_specs(adapter, phi3_tensors())}
    assert specs["blk.0.attn_qkv.weight"].shape == (128, 64)
    assert specs["blk.0.ffn_up.weight"].shape == (192, 64)
    assert specs["blk.0.ffn_up.weight"].sources == ("model.layers.0.mlp.gate_up_proj.weight",)
    assert not any(n.startswith("rope_factors") for n in specs)
    meta = metadata(adapter)
    assert meta["phi3.rope.dimension_count"] == 16 and meta["phi3.attention.sliding_window"] == 2047
    assert meta["phi3.rope.scaling.original_context_length"] == 4096
    assert "phi3.rope.scaling.attn_factor" not in meta


def test_phi3_longrope_writes_factor_tensors_and_attention_factor() -> None:
    long = [1.0 + i / 10 for i in range(8)]
    short = [1.0 + i / 100 for i in range(8)]
    config = {**PHI3_CONFIG, "max_position_embeddings": 131072, "partial_rotary_factor": 1.0,
              "rope_scaling": {"type": "longrope", "long_factor": long, "short_factor": short}}
    adapter = adapter_for(config)
    specs = {s.name: s for s in gguf_specs(adapter, phi3_tensors())}
    assert specs["rope_factors_long.weight"].transform == Constant(tuple(long))
    np.testing.assert_array_equal(specs["rope_factors_short.weight"].transform.apply([]), np.float32(short))
    assert specs["rope_factors_long.weight"].shape == (8,) and specs["rope_factors_long.weight"].generated
    meta = metadata(adapter)
    scale = 131072 / 4096
    assert meta["phi3.rope.scaling.attn_factor"] == pytest.approx(math.sqrt(1 + math.log(scale) / math.log(4096)))
    assert "phi3.rope.scaling.type" not in meta


def test_phi3_partial_rotary_factor_sets_the_rope_dimensions() -> None:
    config = {**PHI3_CONFIG, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                                 "partial_rotary_factor": 0.75}}
    assert metadata(adapter_for(config))["phi3.rope.dimension_count"] == 12


# ---- bert ----------------------------------------------------------------------------------------------------

BERT_CONFIG = {"architectures": ["BertForMaskedLM"], "num_hidden_layers": 1, "hidden_size": 32,
               "intermediate_size": 64, "num_attention_heads": 2, "vocab_size": 50, "max_position_embeddings": 64,
               "type_vocab_size": 2, "layer_norm_eps": 1e-12}


def bert_tensors(prefix: str) -> dict[str, TensorInfo]:
    p = prefix + "encoder.layer.0."
    return infos({
        prefix + "embeddings.word_embeddings.weight": (50, 32), prefix + "embeddings.position_embeddings.weight": (64, 32),
        prefix + "embeddings.token_type_embeddings.weight": (2, 32), prefix + "embeddings.LayerNorm.gamma": (32,),
        prefix + "embeddings.LayerNorm.beta": (32,), prefix + "embeddings.position_ids": (1, 64),
        p + "attention.self.query.weight": (32, 32), p + "attention.self.query.bias": (32,),
        p + "attention.self.key.weight": (32, 32), p + "attention.self.value.weight": (32, 32),
        p + "attention.output.dense.weight": (32, 32), p + "attention.output.LayerNorm.weight": (32,),
        p + "intermediate.dense.weight": (64, 32), p + "output.dense.weight": (32, 64),
        p + "output.LayerNorm.weight": (32,), p + "output.LayerNorm.bias": (32,),
        # every BERT linear and LayerNorm has a bias; the model description expects them all
        p + "attention.self.key.bias": (32,), p + "attention.self.value.bias": (32,),
        p + "attention.output.dense.bias": (32,), p + "attention.output.LayerNorm.bias": (32,),
        p + "intermediate.dense.bias": (64,), p + "output.dense.bias": (32,),
        prefix + "pooler.dense.weight": (32, 32), "cls.predictions.bias": (50,),
        "cls.predictions.transform.dense.weight": (32, 32),
    })


def test_bert_task_checkpoint_strips_prefix_and_heads() -> None:
    adapter = adapter_for(BERT_CONFIG)
    specs = {s.name: s for s in gguf_specs(adapter, bert_tensors("bert."))}
    assert specs["token_embd_norm.weight"].sources == ("bert.embeddings.LayerNorm.gamma",)
    assert specs["token_embd_norm.bias"].sources == ("bert.embeddings.LayerNorm.beta",)
    assert {"token_types.weight", "position_embd.weight", "blk.0.layer_output_norm.bias"} <= set(specs)
    assert not any("pooler" in s or "cls." in s or "position_ids" in s for spec in specs.values() for s in spec.sources)
    meta = metadata(adapter)
    assert meta["bert.attention.causal"] is False
    assert meta["bert.attention.layer_norm_epsilon"] == 1e-12
    assert "bert.pooling_type" not in meta and adapter.numerics.norm == "layer"


def test_bert_pooling_comes_from_the_sentence_transformers_folder(tmp_path: Path) -> None:
    (tmp_path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    adapter = adapter_for({**BERT_CONFIG, "architectures": ["BertModel"]}, tmp_path)
    assert metadata(adapter)["bert.pooling_type"] == int(PoolingType.CLS)


def test_bert_classifier_becomes_cls_output_with_labels() -> None:
    config = {**BERT_CONFIG, "architectures": ["BertForSequenceClassification"],
              "id2label": {"1": "positive", "0": "negative"}}
    tensors = bert_tensors("bert.")
    tensors.update(infos({"classifier.weight": (2, 32), "classifier.bias": (2,)}))
    adapter = adapter_for(config)
    names = {s.name for s in gguf_specs(adapter, tensors)}
    assert {"cls.output.weight", "cls.output.bias"} <= names
    assert metadata(adapter)["bert.classifier.output_labels"] == ["negative", "positive"]
