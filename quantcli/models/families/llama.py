"""Llama and the families that share its layout: Llama 2/3, Mistral, SmolLM, TinyLlama.

Mistral is the llama graph in llama.cpp. Its `sliding_window` (4096 in Mistral 7B v0.1, null from v0.2 on) is
not written: llama.cpp's llama graph attends over the whole context, which only differs from the HF model on
prompts longer than the window.
"""
from __future__ import annotations

from typing import Mapping

import gguf
from gguf import Keys, MODEL_ARCH, MODEL_TENSOR

from ...io.safetensors import TensorInfo
from ..base import IDENTITY, Architecture, TensorSpec, config_int, register
from ...io.gguf_metadata import MetaKV, kv_u32
from ..transforms import Llama3RopeFactors, PermuteRope, Transform

ROPE_FREQS = gguf.TENSOR_NAMES[MODEL_TENSOR.ROPE_FREQS] + ".weight"

# Llama 3.1's published defaults, used when a llama3 rope_scaling block leaves a field out (as the HF code does)
LLAMA3_ROPE_DEFAULTS = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 8192}


@register
class Llama(Architecture):
    hf_architectures = ("LlamaForCausalLM", "LLaMAForCausalLM", "MistralForCausalLM")
    gguf_arch = MODEL_ARCH.LLAMA

    def extra_metadata(self) -> list[MetaKV]:
        return [kv_u32(self.key(Keys.LLM.VOCAB_SIZE), self.need_int("vocab_size")),
                kv_u32(self.key(Keys.Rope.DIMENSION_COUNT), self.head_dim)]

    def transform_for(self, gguf_name: str, hf_name: str, info: TensorInfo) -> Transform:
        # llama.cpp's llama graph uses interleaved rope, so q and k rows are regrouped per head.
        if gguf_name.endswith(("attn_q.weight", "attn_q.bias")):
            return PermuteRope(self.n_head)
        if gguf_name.endswith(("attn_k.weight", "attn_k.bias")):
            return PermuteRope(self.n_head_kv)
        return IDENTITY

    def extra_tensors(self, tensors: Mapping[str, TensorInfo]) -> list[TensorSpec]:
        # Llama 3.1+ rope scaling has no metadata key in llama.cpp: it reads per-dimension divisors from rope_freqs.
        scaling = self.rope_scaling()
        if str(scaling.get("rope_type", scaling.get("type", ""))).lower() != "llama3":
            return []
        params = {k: scaling.get(k) if scaling.get(k) is not None else v for k, v in LLAMA3_ROPE_DEFAULTS.items()}
        num = {k: self.sub_float(params, k, "rope_scaling", positive=True) or 0.0 for k in params}
        factors = Llama3RopeFactors(
            head_dim=self.head_dim, rope_theta=self.rope_theta() or 10000.0, factor=num["factor"],
            low_freq_factor=num["low_freq_factor"], high_freq_factor=num["high_freq_factor"],
            original_context=config_int(params["original_max_position_embeddings"],
                                        "rope_scaling.original_max_position_embeddings", self.config_source))
        return [TensorSpec(ROPE_FREQS, (), (self.head_dim // 2,), factors)]
