"""Qwen2 / Qwen2.5: the llama block with biases on q, k and v, neox-style rope, usually tied embeddings.

Nothing is transformed: llama.cpp's qwen2 graph uses neox rope (rotating the two halves of each head, as HF
does), so q and k keep their HF row order. `Qwen2Model` (no LM head: embedding models such as gte-Qwen2) has
its tensor names without the `model.` prefix and may come with a sentence-transformers pooling module.
"""
from __future__ import annotations

from typing import ClassVar

from gguf import MODEL_ARCH

from ..base import Architecture, Numerics, register
from ...io.gguf_metadata import MetaKV


@register
class Qwen2(Architecture):
    hf_architectures = ("Qwen2ForCausalLM", "Qwen2Model")
    gguf_arch = MODEL_ARCH.QWEN2
    numerics = Numerics(rope="neox")
    # the bare transformer classes save their tensors without the "model." prefix
    headless: ClassVar[tuple[str, ...]] = ("Qwen2Model",)

    def gguf_name(self, hf_name: str) -> str | None:
        if (self.config.get("architectures") or [""])[0] in self.headless and not hf_name.startswith("model."):
            hf_name = "model." + hf_name
        return super().gguf_name(hf_name)

    def extra_metadata(self) -> list[MetaKV]:
        return self.pooling_metadata()

    def attention_biases(self) -> tuple[bool, bool]:
        return True, False  # biases on q, k and v; none on o_proj

    def attention_window_layers(self) -> list[bool]:
        if isinstance(self.config.get("layer_types"), list):
            return super().attention_window_layers()
        # configs written before `layer_types`: the window applies from block max_window_layers on, if switched on
        if not self.get("use_sliding_window", default=False) or self.get("sliding_window") is None:
            return [False] * self.n_layer
        first = int(self.get("max_window_layers", default=0))  # type: ignore[call-overload]
        return [i >= first for i in range(self.n_layer)]
