"""Gemma 2: RMSNorm with (1 + w) scales, norms before and after both sublayers, soft-capped logits, and
attention that alternates between a sliding window and the full context.

What the conversion does:
- every norm weight gets +1 (HF stores w - 1; llama.cpp multiplies by the weight as stored);
- `lm_head.weight` is dropped: llama.cpp's gemma2 graph always reuses token_embd as the output matrix;
- metadata: attention and final logit soft-capping limits, the window size, and which layers slide.

llama.cpp has no key for `query_pre_attn_scalar`: its gemma2 graph scales queries by 1/sqrt(head_dim), except
for the 46-layer 27B model where it uses 1/sqrt(hidden / heads). Every released Gemma 2 matches that rule; a
config that does not is refused rather than converted into a model that attends differently.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Mapping

from gguf import GGUFValueType, Keys, MODEL_ARCH

from ...errors import UnsupportedError
from ...io.safetensors import TensorInfo
from ..base import IDENTITY, Architecture, Numerics, register
from ..layout import GEMMA_LAYOUT
from ...io.gguf_metadata import MetaKV, kv_array, kv_f32, kv_u32
from ..transforms import AddOne, Transform

GEMMA_NUMERICS = Numerics(norm_weight_offset=1.0, activation="gelu_tanh", rope="neox", embed_scale="sqrt_hidden",
                          post_norms=True)


@register
class Gemma2(Architecture):
    hf_architectures = ("Gemma2ForCausalLM",)
    gguf_arch = MODEL_ARCH.GEMMA2
    numerics = GEMMA_NUMERICS
    hf_layout = GEMMA_LAYOUT
    tied_by_default = True
    ignored = Architecture.ignored + (r"^lm_head\.weight$",)
    # Period of the sliding/global alternation when the config does not list layer_types (llama.cpp's default).
    swa_period: ClassVar[int] = 2
    # llama.cpp tells the 27B model, whose query scale differs, by its number of blocks.
    big_model_blocks: ClassVar[int] = 46

    def __init__(self, config: Mapping, folder: Path | None = None) -> None:
        super().__init__(config, folder)
        self._check_query_scale()

    def _check_query_scale(self) -> None:
        scalar = self.get_int("query_pre_attn_scalar")
        if scalar is None:
            return
        hidden = self.need_int("hidden_size")
        used = hidden // self.n_head if self.n_layer == self.big_model_blocks else self.head_dim
        if scalar != used:
            raise UnsupportedError(
                f"query_pre_attn_scalar is {scalar}, but llama.cpp's {self.arch_name} graph scales queries by "
                f"1/sqrt({used}) for a {self.n_layer}-block model and has no setting to change it.",
                hint="The converted model would attend differently from the original; this checkpoint cannot be "
                     "run faithfully by llama.cpp.")

    def transform_for(self, gguf_name: str, hf_name: str, info: TensorInfo) -> Transform:
        return AddOne() if hf_name.endswith("norm.weight") else IDENTITY

    def sliding_metadata(self) -> list[MetaKV]:
        # The per-layer list is written even where it equals llama.cpp's default period, so a config with
        # another layout (layer_types) converts faithfully.
        layers = self.sliding_layers(self.swa_period)
        out = [kv_array(self.key(Keys.Attention.SLIDING_WINDOW_PATTERN), layers, GGUFValueType.BOOL)]
        if any(layers):
            out.insert(0, kv_u32(self.key(Keys.Attention.SLIDING_WINDOW), self.need_int("sliding_window")))
        return out

    def attention_window_layers(self) -> list[bool]:
        return self.sliding_layers(self.swa_period)

    def softcap(self, key: str) -> float:
        value = self.get_float(key, positive=True)
        if value is None:
            raise UnsupportedError(f"config.json has no {key}; llama.cpp's {self.arch_name} graph always soft-caps "
                                   "and would use its own default.",
                                   hint=f"Set {key} in config.json to the value the model was trained with.")
        return value

    def extra_metadata(self) -> list[MetaKV]:
        return [kv_f32(self.key(Keys.LLM.ATTN_LOGIT_SOFTCAPPING), self.softcap("attn_logit_softcapping")),
                kv_f32(self.key(Keys.LLM.FINAL_LOGIT_SOFTCAPPING), self.softcap("final_logit_softcapping")),
                *self.sliding_metadata()]
