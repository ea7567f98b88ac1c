"""BERT encoders for embeddings (all-MiniLM, bge, e5, ...): BertModel, BertForMaskedLM and
BertForSequenceClassification checkpoints.

What the conversion does:
- names: the `bert.` prefix of the task-head classes is removed, and old-style LayerNorm `gamma` / `beta`
  become `weight` / `bias`; word, position and token-type embeddings keep their roles (llama.cpp adds the
  position table and the type-0 row of the token-type table to the token embeddings);
- dropped: the pooler (llama.cpp pools itself), the masked-LM and next-sentence heads, the position_ids buffer;
- a sequence classifier's `classifier` becomes cls.output, with its labels (in id order) in metadata;
- metadata: bidirectional attention (causal_attention false), the LayerNorm epsilon, and the pooling
  (mean / cls / last) when the folder is a sentence-transformers model. The token-type count that sizes
  token_types.weight is a tokenizer key, written by the WordPiece export from the same config.
"""
from __future__ import annotations

import re

from gguf import GGUFValueType, Keys, MODEL_ARCH

from ...errors import InputError
from ..base import Architecture, Numerics, register
from ..layout import BERT_LAYOUT
from ...io.gguf_metadata import MetaKV, kv_array, kv_bool

CLASSIFIER = "BertForSequenceClassification"


@register
class Bert(Architecture):
    hf_architectures = ("BertModel", "BertForMaskedLM", "BertForSequenceClassification")
    gguf_arch = MODEL_ARCH.BERT
    numerics = Numerics(norm="layer", activation="gelu", gated_ffn=False, rope="none", causal=False)
    hf_layout = BERT_LAYOUT
    tied_by_default = True  # no LM head in BertModel; the flag only matters to the masked-LM head
    ignored = Architecture.ignored + (
        r"(^|\.)embeddings\.position_ids$",
        r"(^|\.)pooler\.dense\.",
        r"^cls\.(predictions|seq_relationship)\.",
    )

    def gguf_name(self, hf_name: str) -> str | None:
        name = hf_name.removeprefix("bert.")
        name = re.sub(r"\.gamma$", ".weight", name)
        name = re.sub(r"\.beta$", ".bias", name)
        if self.is_classifier and name in ("classifier.weight", "classifier.bias"):
            name = name.replace("classifier.", "classifier.out_proj.")
        return super().gguf_name(name)

    @property
    def is_classifier(self) -> bool:
        return CLASSIFIER in (self.config.get("architectures") or [])

    def attention_biases(self) -> tuple[bool, bool]:
        return True, True

    def ffn_bias(self) -> bool:
        return True

    def attention_window_layers(self) -> list[bool]:
        return [False] * self.n_layer

    def labels(self) -> list[str]:
        """The classifier's labels in id order; llama.cpp sizes cls.output by their count."""
        id2label = self.config.get("id2label") or {}
        if not isinstance(id2label, dict) or not all(isinstance(k, str) and k.isdigit() for k in id2label):
            raise InputError(f"{self.config_source}: id2label must map label ids (\"0\", \"1\", ...) to names.",
                             hint="Fix id2label in config.json (or re-download it).")
        return [str(v) for _, v in sorted(id2label.items(), key=lambda kv: int(kv[0]))]

    def extra_metadata(self) -> list[MetaKV]:
        # tokenizer.ggml.token_type_count (the rows of token_types.weight) is written by the WordPiece export
        out = [kv_bool(self.key(Keys.Attention.CAUSAL), False), *self.pooling_metadata()]
        if self.is_classifier:
            out.append(kv_array(self.key(Keys.Classifier.OUTPUT_LABELS), self.labels(), GGUFValueType.STRING))
        return out
