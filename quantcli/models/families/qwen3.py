"""Qwen3 (dense): Qwen2's layout without the q/k/v biases, plus an RMSNorm over each head of q and k.

The per-head norms (`self_attn.q_norm` / `k_norm`, one weight of head_dim values shared by all heads) map to
attn_q_norm / attn_k_norm as they are. Qwen3 configs give `head_dim` explicitly and it may make q wider than
hidden (Qwen3-0.6B: 16 heads x 128 > 1024), so key_length / value_length are written from it.
"""
from __future__ import annotations

from gguf import MODEL_ARCH

from ..base import Numerics, register
from .qwen2 import Qwen2


@register
class Qwen3(Qwen2):
    hf_architectures = ("Qwen3ForCausalLM", "Qwen3Model")
    gguf_arch = MODEL_ARCH.QWEN3
    numerics = Numerics(rope="neox", qk_norm=True)
    headless = ("Qwen3Model",)

    def attention_biases(self) -> tuple[bool, bool]:
        flag = bool(self.get("attention_bias", default=False))  # Qwen3 dropped Qwen2's fixed q/k/v biases
        return flag, flag
