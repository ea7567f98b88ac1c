"""Where each tensor of a family lives in a Hugging Face checkpoint: role -> HF name template.

A role is a family-neutral name for what a tensor does in the forward pass ("attn_q", "ffn_down",
"post_attn_norm", ...); the engine and any later writer work with roles, and only this table and the adapter know
how a family spells them. Templates use `{i}` for the block index. Names are the canonical ones of the config's
own class; prefixed variants (`bert.`, `language_model.`, a headless `Qwen2Model`) are resolved against the real
checkpoint through the adapter's GGUF name map, which already knows them.

A role listed here is only present in a model when the family and config say so (biases, q/k norms, post norms):
quantcli.models.spec decides that from the config.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping


def _frozen(d: dict[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(d))


@dataclass(frozen=True)
class HFLayout:
    """Role -> HF name template, for the tensors outside the blocks and for one block."""

    globals: Mapping[str, str]
    block: Mapping[str, str]
    fused_qkv: bool = False          # q, k and v rows stored in one matrix (phi3), in that order
    fused_gate_up: bool = False      # gate rows then up rows in one matrix (phi3)
    post_norm_block: bool = False    # bert: LayerNorm after each residual add instead of before each sublayer


_LLAMA_BLOCK = {
    "attn_norm": "model.layers.{i}.input_layernorm.weight",
    "attn_q": "model.layers.{i}.self_attn.q_proj.weight",
    "attn_q_bias": "model.layers.{i}.self_attn.q_proj.bias",
    "attn_k": "model.layers.{i}.self_attn.k_proj.weight",
    "attn_k_bias": "model.layers.{i}.self_attn.k_proj.bias",
    "attn_v": "model.layers.{i}.self_attn.v_proj.weight",
    "attn_v_bias": "model.layers.{i}.self_attn.v_proj.bias",
    "attn_out": "model.layers.{i}.self_attn.o_proj.weight",
    "attn_out_bias": "model.layers.{i}.self_attn.o_proj.bias",
    "attn_q_norm": "model.layers.{i}.self_attn.q_norm.weight",
    "attn_k_norm": "model.layers.{i}.self_attn.k_norm.weight",
    "ffn_norm": "model.layers.{i}.post_attention_layernorm.weight",
    "ffn_gate": "model.layers.{i}.mlp.gate_proj.weight",
    "ffn_gate_bias": "model.layers.{i}.mlp.gate_proj.bias",
    "ffn_up": "model.layers.{i}.mlp.up_proj.weight",
    "ffn_up_bias": "model.layers.{i}.mlp.up_proj.bias",
    "ffn_down": "model.layers.{i}.mlp.down_proj.weight",
    "ffn_down_bias": "model.layers.{i}.mlp.down_proj.bias",
}
_DECODER_GLOBALS = {
    "tok_embd": "model.embed_tokens.weight",
    "output_norm": "model.norm.weight",
    "output": "lm_head.weight",
}

LLAMA_LAYOUT = HFLayout(globals=_frozen(_DECODER_GLOBALS), block=_frozen(_LLAMA_BLOCK))

# Gemma: "post_attention_layernorm" is the norm on the attention *output*; the FFN's input norm is
# pre_feedforward_layernorm (in llama the former name is the FFN's input norm).
GEMMA_LAYOUT = HFLayout(globals=_frozen(_DECODER_GLOBALS), block=_frozen({
    **_LLAMA_BLOCK,
    "post_attn_norm": "model.layers.{i}.post_attention_layernorm.weight",
    "ffn_norm": "model.layers.{i}.pre_feedforward_layernorm.weight",
    "post_ffn_norm": "model.layers.{i}.post_feedforward_layernorm.weight",
}))

PHI3_LAYOUT = HFLayout(globals=_frozen(_DECODER_GLOBALS), block=_frozen({
    "attn_norm": "model.layers.{i}.input_layernorm.weight",
    "attn_qkv": "model.layers.{i}.self_attn.qkv_proj.weight",
    "attn_out": "model.layers.{i}.self_attn.o_proj.weight",
    "ffn_norm": "model.layers.{i}.post_attention_layernorm.weight",
    "ffn_gate_up": "model.layers.{i}.mlp.gate_up_proj.weight",
    "ffn_down": "model.layers.{i}.mlp.down_proj.weight",
}), fused_qkv=True, fused_gate_up=True)

# BertModel's own names; task-head classes prefix them with "bert.". Every linear and LayerNorm has a bias.
_BERT_LAYER = "encoder.layer.{i}."
BERT_LAYOUT = HFLayout(globals=_frozen({
    "tok_embd": "embeddings.word_embeddings.weight",
    "pos_embd": "embeddings.position_embeddings.weight",
    "type_embd": "embeddings.token_type_embeddings.weight",
    "embd_norm": "embeddings.LayerNorm.weight",
    "embd_norm_bias": "embeddings.LayerNorm.bias",
}), block=_frozen({
    "attn_q": _BERT_LAYER + "attention.self.query.weight",
    "attn_q_bias": _BERT_LAYER + "attention.self.query.bias",
    "attn_k": _BERT_LAYER + "attention.self.key.weight",
    "attn_k_bias": _BERT_LAYER + "attention.self.key.bias",
    "attn_v": _BERT_LAYER + "attention.self.value.weight",
    "attn_v_bias": _BERT_LAYER + "attention.self.value.bias",
    "attn_out": _BERT_LAYER + "attention.output.dense.weight",
    "attn_out_bias": _BERT_LAYER + "attention.output.dense.bias",
    "attn_out_norm": _BERT_LAYER + "attention.output.LayerNorm.weight",
    "attn_out_norm_bias": _BERT_LAYER + "attention.output.LayerNorm.bias",
    "ffn_up": _BERT_LAYER + "intermediate.dense.weight",
    "ffn_up_bias": _BERT_LAYER + "intermediate.dense.bias",
    "ffn_down": _BERT_LAYER + "output.dense.weight",
    "ffn_down_bias": _BERT_LAYER + "output.dense.bias",
    "layer_out_norm": _BERT_LAYER + "output.LayerNorm.weight",
    "layer_out_norm_bias": _BERT_LAYER + "output.LayerNorm.bias",
}), post_norm_block=True)
