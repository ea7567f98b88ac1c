"""Gemma 3 text model: Gemma 2's block with per-head q/k RMSNorms instead of attention soft-capping, five
sliding-window layers for each global one, and a separate rope base for the sliding layers.

Both `Gemma3ForCausalLM` (1B, text only) and the text half of `Gemma3ForConditionalGeneration` (4B/12B/27B)
convert here. The multimodal checkpoint nests the language model under `language_model.` (or
`model.language_model.`); that prefix is removed and the vision tower and projector are left out (llama.cpp
loads them from a separate mmproj file).

What the conversion does beyond Gemma 2:
- +1 on every norm weight, the q/k norms included;
- rope: the global base (rope_theta, 1e6 by default) and the sliding layers' base (rope_local_base_freq or
  rope_parameters.sliding_attention, 10000 by default); linear rope scaling (factor 8 in the 4B+ models)
  applies to the global layers only, which is also how llama.cpp reads it;
- sliding window size and the per-layer pattern; a model with no sliding layer gets neither, which switches
  llama.cpp to plain causal attention;
- final logit soft-capping only when the config sets it (Gemma 3 has none).

Released multimodal configs omit most text hyperparameters and rely on transformers' defaults, so those
defaults are filled in first.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Mapping

from gguf import GGUFValueType, Keys, MODEL_ARCH

from ..base import Architecture, register
from ...io.gguf_metadata import MetaKV, kv_array, kv_f32, kv_u32
from .gemma2 import GEMMA_NUMERICS, Gemma2

# Gemma3TextConfig's defaults for the keys the conversion reads.
GEMMA3_TEXT_DEFAULTS = {
    "vocab_size": 262208, "intermediate_size": 9216, "max_position_embeddings": 131072, "num_attention_heads": 8,
    "num_key_value_heads": 4, "head_dim": 256, "rms_norm_eps": 1e-6, "query_pre_attn_scalar": 256,
    "sliding_window": 4096, "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0,
}


@register
class Gemma3(Gemma2):
    hf_architectures = ("Gemma3ForCausalLM", "Gemma3ForConditionalGeneration")
    gguf_arch = MODEL_ARCH.GEMMA3
    numerics = replace(GEMMA_NUMERICS, qk_norm=True)
    # Unlike gemma2, llama.cpp's gemma3 graph uses output.weight when a checkpoint has one.
    ignored = Architecture.ignored + (r"(^|\.)(vision_tower|vision_model|multi_modal_projector)\.",)
    swa_period = 6
    big_model_blocks = 62

    def __init__(self, config: Mapping, folder: Path | None = None) -> None:
        merged = dict(config)
        if isinstance(merged.get("text_config"), dict):
            merged = {**merged, **merged["text_config"]}
            merged.pop("text_config")
        super().__init__({**GEMMA3_TEXT_DEFAULTS, **{k: v for k, v in merged.items() if v is not None}}, folder)

    def gguf_name(self, hf_name: str) -> str | None:
        return super().gguf_name(hf_name.replace("language_model.", "", 1))

    def sliding_metadata(self) -> list[MetaKV]:
        layers = self.sliding_layers(self.swa_period)
        if not any(layers):
            return []
        return [kv_u32(self.key(Keys.Attention.SLIDING_WINDOW), self.need_int("sliding_window")),
                kv_array(self.key(Keys.Attention.SLIDING_WINDOW_PATTERN), layers, GGUFValueType.BOOL),
                kv_f32(self.key(Keys.Rope.FREQ_BASE_SWA), self.rope_theta_swa())]

    def extra_metadata(self) -> list[MetaKV]:
        out = self.sliding_metadata()
        if softcap := self.get_float("final_logit_softcapping"):
            out.append(kv_f32(self.key(Keys.LLM.FINAL_LOGIT_SOFTCAPPING), softcap))
        return out
