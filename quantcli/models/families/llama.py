"""Llama and the families that share its layout: Llama 2/3, Mistral, SmolLM, TinyLlama."""
from __future__ import annotations

from gguf import Keys, MODEL_ARCH

from ...io.safetensors import TensorInfo
from ..base import IDENTITY, Architecture, register
from ..metadata import MetaKV, kv_u32
from ..transforms import PermuteRope, Transform


@register
class Llama(Architecture):
    hf_architectures = ("LlamaForCausalLM", "LLaMAForCausalLM", "MistralForCausalLM")
    gguf_arch = MODEL_ARCH.LLAMA

    def extra_metadata(self) -> list[MetaKV]:
        return [kv_u32(self.key(Keys.LLM.VOCAB_SIZE), self.need("vocab_size")),
                kv_u32(self.key(Keys.Rope.DIMENSION_COUNT), self.head_dim)]

    def transform_for(self, gguf_name: str, hf_name: str, info: TensorInfo) -> Transform:
        # llama.cpp's llama graph uses interleaved rope, so q and k rows are regrouped per head.
        if gguf_name.endswith(("attn_q.weight", "attn_q.bias")):
            return PermuteRope(self.n_head)
        if gguf_name.endswith(("attn_k.weight", "attn_k.bias")):
            return PermuteRope(self.n_head_kv)
        return IDENTITY
