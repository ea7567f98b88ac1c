"""Phi-3 / Phi-3.5 / Phi-4-mini: a llama-like block whose projections are stored fused.

`self_attn.qkv_proj` (q rows, then k, then v) becomes attn_qkv and `mlp.gate_up_proj` (gate rows, then up)
becomes ffn_up with 2 x intermediate_size rows: llama.cpp's phi3 graph takes both fused, splitting the FFN
output in halves as silu(first) * second, which is HF's gate/up order. Rope is neox-style, so nothing is permuted.

Rope details written as llama.cpp's phi3 loader reads them:
- rope dimension count = partial_rotary_factor x head size (Phi-4-mini rotates 3/4 of each head);
- the original (pre-extension) context length, which picks the short or long factors at load time;
- for the 128k models (rope_scaling type longrope, formerly "su"): the long and short per-dimension factors as
  the rope_factors_long / rope_factors_short tensors, and the attention factor that scales cos/sin
  (sqrt(1 + ln(s) / ln(original context)) with s = context / original context, unless the config gives one);
- the sliding window (0 when absent). llama.cpp currently attends over the full context for phi3 anyway.
"""
from __future__ import annotations

import math
from typing import Mapping

import gguf
from gguf import Keys, MODEL_ARCH, MODEL_TENSOR

from ...errors import InputError, UnsupportedError
from ...io.safetensors import TensorInfo
from ..base import Architecture, Numerics, TensorSpec, config_int, register
from ..layout import PHI3_LAYOUT
from ...io.gguf_metadata import MetaKV, kv_f32, kv_u32
from ..transforms import Constant

ROPE_FACTORS_LONG = gguf.TENSOR_NAMES[MODEL_TENSOR.ROPE_FACTORS_LONG] + ".weight"
ROPE_FACTORS_SHORT = gguf.TENSOR_NAMES[MODEL_TENSOR.ROPE_FACTORS_SHORT] + ".weight"
LONGROPE_TYPES = ("longrope", "su")


@register
class Phi3(Architecture):
    hf_architectures = ("Phi3ForCausalLM",)
    gguf_arch = MODEL_ARCH.PHI3
    numerics = Numerics(rope="neox")
    hf_layout = PHI3_LAYOUT

    def partial_rotary_factor(self) -> float:
        scaling = self.rope_scaling()
        value = self.sub_float(scaling, "partial_rotary_factor", "rope_scaling", positive=True)
        return value if value is not None else self.get_float("partial_rotary_factor", default=1.0, positive=True) or 1.0

    def rope_dims(self) -> int:
        hidden = self.need_int("hidden_size")
        return int(self.partial_rotary_factor() * hidden) // self.n_head

    def original_context(self) -> int:
        value = self.rope_scaling().get("original_max_position_embeddings")
        if value:
            return config_int(value, "rope_scaling.original_max_position_embeddings", self.config_source)
        return self.need_int("original_max_position_embeddings", "max_position_embeddings", "n_positions")

    def long_short_factors(self) -> tuple[list[float], list[float]] | None:
        scaling = self.rope_scaling()
        long, short = scaling.get("long_factor"), scaling.get("short_factor")
        if not long:
            return None
        kind = str(scaling.get("rope_type", scaling.get("type", ""))).lower()
        if kind not in LONGROPE_TYPES:
            raise UnsupportedError(f"phi3 rope scaling {kind!r} with long/short factors is not supported.",
                                   hint="Only longrope (\"su\") factor tables convert; please report the model id.")
        if not short or len(long) != len(short) or len(long) != self.rope_dims() // 2:
            raise InputError(f"rope_scaling needs long_factor and short_factor of {self.rope_dims() // 2} values each "
                             f"(got {len(long)} and {len(short or [])}).",
                             hint="Check config.json's rope_scaling against the model's head size.")
        return [float(x) for x in long], [float(x) for x in short]

    def rope_scaling_metadata(self) -> list[MetaKV]:
        # phi3 writes no scaling type: the long/short factor tensors carry the scaling.
        out = [kv_u32(self.key(Keys.Rope.SCALING_ORIG_CTX_LEN), self.original_context())]
        if self.long_short_factors() is not None:
            attn_factor = self.rope_scaling().get("attention_factor")
            if attn_factor is None:
                scale = self.need_int("max_position_embeddings", "n_positions") / self.original_context()
                attn_factor = math.sqrt(1 + math.log(scale) / math.log(self.original_context())) if scale > 1 else 1.0
            else:
                attn_factor = self.sub_float(self.rope_scaling(), "attention_factor", "rope_scaling", positive=True)
            out.append(kv_f32(self.key(Keys.Rope.SCALING_ATTN_FACTOR), attn_factor))
        return out

    def extra_metadata(self) -> list[MetaKV]:
        return [kv_u32(self.key(Keys.Rope.DIMENSION_COUNT), self.rope_dims()),
                kv_u32(self.key(Keys.Attention.SLIDING_WINDOW), self.get_int("sliding_window", default=0, min=0))]

    def extra_tensors(self, tensors: Mapping[str, TensorInfo]) -> list[TensorSpec]:
        factors = self.long_short_factors()
        if factors is None:
            return []
        long, short = factors
        return [TensorSpec(ROPE_FACTORS_LONG, (), (len(long),), Constant(tuple(long))),
                TensorSpec(ROPE_FACTORS_SHORT, (), (len(short),), Constant(tuple(short)))]
