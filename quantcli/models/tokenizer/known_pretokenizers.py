"""Data: the BPE pre-tokenizer definitions (as tokenizer.json spells them) that llama.cpp implements, by name.

llama.cpp does not run a tokenizer.json's pre-tokenizer; it runs its own regex list chosen by the GGUF's
`tokenizer.ggml.pre` name (src/llama-vocab.cpp, llm_tokenizer_bpe). Each row below pairs a definition with the name
whose regex list splits text the same way, plus the llama.cpp-side flags that go with that name. Several names share
one regex list and differ only in those flags; the flags then pick the row:
- ignore_merges: llama.cpp looks a whole pre-token up in the vocabulary before merging (HF: model.ignore_merges);
- clean_spaces: llama.cpp removes the space before punctuation when detokenizing (HF: tokenizer_config.json's
  clean_up_tokenization_spaces);
- normalizer: the tokenizer.json normaliser the models of that row ship ("none" or "nfc"; None = no preference).
  llama.cpp applies no normaliser, so NFC is accepted anywhere; text that is not in NFC may then split
  differently than in transformers, exactly as with llama.cpp's own converter.

Regexes are written with \\u escapes so that no editor or tool can silently re-normalise their characters.
Sources: llama.cpp's llama-vocab.cpp (the regex lists and the "original regex from tokenizer.json" comments),
convert_hf_to_gguf_update.py (which model carries which name) and the tokenizer test vectors in llama.cpp's
models/ folder, against which the definitions marked "checked" are verified in tests/models/test_tokenizer.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class KnownPreTokenizer:
    """One tokenizer.json pre_tokenizer definition and the llama.cpp name that reproduces it."""

    name: str                  # tokenizer.ggml.pre
    models: str                # who ships it (documentation only)
    definition: dict[str, Any]  # the pre_tokenizer object of tokenizer.json
    normalizer: str | None     # "none", "nfc", or None for no preference
    ignore_merges: bool        # llama.cpp's setting for this name
    clean_spaces: bool         # llama.cpp's setting for this name


def byte_level(use_regex: bool) -> dict[str, Any]:
    """GPT-2's byte-to-unicode mapping; with use_regex it also splits with GPT-2's own regex first."""
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": use_regex}


def split(regex: str) -> dict[str, Any]:
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


def digits(individual: bool) -> dict[str, Any]:
    return {"type": "Digits", "individual_digits": individual}


def sequence(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"type": "Sequence", "pretokenizers": list(steps)}


CONTRACTIONS_ANY_CASE = "(?i:'s|'t|'re|'ve|'m|'ll|'d)"
# Llama 3 (tiktoken cl100k style): letters with one leading non-letter, numbers in groups of up to three.
LLAMA3_REGEX = (
    CONTRACTIONS_ANY_CASE
    + "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)
# Qwen: as Llama 3 but every digit alone.
QWEN2_REGEX = (
    CONTRACTIONS_ANY_CASE
    + "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)
# Qwen 3.5: as Qwen but combining marks stay with their letters.
QWEN35_REGEX = (
    CONTRACTIONS_ANY_CASE
    + "|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+"
    + "|\\s+(?!\\S)|\\s+"
)
# Mistral's tekken (tiktoken o200k style without contractions): words split at case changes.
TEKKEN_REGEX = (
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+"
    "|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*"
    "|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)
# OpenAI o200k: tekken's word rule plus optional contractions, numbers in groups of up to three.
GPT4O_REGEX = (
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+"
    + CONTRACTIONS_ANY_CASE + "?"
    + "|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*"
    + CONTRACTIONS_ANY_CASE + "?"
    + "|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)
LINE_BREAK = "[\r\n]"
# CJK unified ideographs, then the range from Samaritan up to them, then Hangul syllables (DeepSeek's grouping).
DEEPSEEK_CJK = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
# DeepSeek LLM's explicit list of cased letters (Latin, Greek, Cyrillic, Armenian, Georgian, Cherokee, ...).
DEEPSEEK_LLM_LETTERS = (
    "\\s?[A-Za-z\xb5\xc0-\xd6\xd8-\xf6\xf8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373\u0376\u0377"
    "\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556"
    "\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a"
    "\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4"
    "\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc"
    "\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f"
    "\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b"
    "\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a"
    "\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2"
    "\U000118a0-\U000118df\U0001e900-\U0001e943]+"
)
DEEPSEEK_LLM_PUNCTUATION = "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+"
# DeepSeek V3: kana next to the ideographs, and punctuation glued to a following Latin word.
DEEPSEEK_V3_CJK = "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"
DEEPSEEK_V3_WORDS = (
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
    "| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"
)

GPT2_BYTE_LEVEL = byte_level(use_regex=True)

KNOWN_PRE_TOKENIZERS: tuple[KnownPreTokenizer, ...] = (
    # GPT-2 regex after isolating every digit. Checked: starcoder, refact, command-r vectors.
    KnownPreTokenizer("smollm", "SmolLM, SmolLM2", sequence(digits(True), GPT2_BYTE_LEVEL),
                      normalizer="none", ignore_merges=False, clean_spaces=False),
    KnownPreTokenizer("starcoder", "StarCoder, StarCoder2, Refact", sequence(digits(True), GPT2_BYTE_LEVEL),
                      normalizer="none", ignore_merges=False, clean_spaces=True),
    KnownPreTokenizer("command-r", "Command R, Aya 23", sequence(digits(True), GPT2_BYTE_LEVEL),
                      normalizer="nfc", ignore_merges=False, clean_spaces=False),
    # GPT-2's own byte-level regex. Checked: gpt-2 and mpt vectors.
    KnownPreTokenizer("gpt-2", "GPT-2, phi-2 and CodeGen", GPT2_BYTE_LEVEL,
                      normalizer="none", ignore_merges=False, clean_spaces=True),
    KnownPreTokenizer("mpt", "MPT, OLMo 1.x, GPT-NeoX, Pythia", GPT2_BYTE_LEVEL,
                      normalizer="nfc", ignore_merges=False, clean_spaces=True),
    # Llama 3 regex. Checked: llama-bpe vectors.
    KnownPreTokenizer("llama-bpe", "Llama 3, 3.1, 3.2, 3.3", sequence(split(LLAMA3_REGEX), byte_level(False)),
                      normalizer="none", ignore_merges=True, clean_spaces=True),
    KnownPreTokenizer("dbrx", "DBRX, Smaug (Llama 3 regex without ignore_merges)",
                      sequence(split(LLAMA3_REGEX), byte_level(False)),
                      normalizer=None, ignore_merges=False, clean_spaces=True),
    # Qwen regex. Checked: qwen2 and qwen35 vectors.
    KnownPreTokenizer("qwen2", "Qwen 1.5, 2, 2.5, 3; DeepSeek-R1 distills of Qwen",
                      sequence(split(QWEN2_REGEX), byte_level(False)),
                      normalizer="nfc", ignore_merges=False, clean_spaces=False),
    KnownPreTokenizer("stablelm2", "StableLM 2", sequence(split(QWEN2_REGEX), byte_level(False)),
                      normalizer=None, ignore_merges=False, clean_spaces=True),
    KnownPreTokenizer("qwen35", "Qwen 3.5", sequence(split(QWEN35_REGEX), byte_level(False)),
                      normalizer="none", ignore_merges=False, clean_spaces=False),
    KnownPreTokenizer("tekken", "Mistral Nemo, Mistral Small 3, Pixtral (HF format)",
                      sequence(split(TEKKEN_REGEX), byte_level(False)),
                      normalizer=None, ignore_merges=True, clean_spaces=False),
    KnownPreTokenizer("gpt-4o", "GPT-4o tokenizer ports, Llama 4", sequence(split(GPT4O_REGEX), byte_level(False)),
                      normalizer=None, ignore_merges=False, clean_spaces=False),
    # DeepSeek's split lists. Checked: deepseek-llm and deepseek-coder vectors.
    KnownPreTokenizer("deepseek-llm", "DeepSeek LLM 7B/67B",
                      sequence(split(LINE_BREAK), split(DEEPSEEK_LLM_LETTERS), split(DEEPSEEK_LLM_PUNCTUATION),
                               split("\\s+$"), split(DEEPSEEK_CJK), digits(False), byte_level(False)),
                      normalizer=None, ignore_merges=False, clean_spaces=False),
    KnownPreTokenizer("deepseek-coder", "DeepSeek Coder 1.x",
                      sequence(split(LINE_BREAK), split("\\s?\\p{L}+"), split("\\s?\\p{P}+"), split(DEEPSEEK_CJK),
                               digits(True), byte_level(False)),
                      normalizer=None, ignore_merges=False, clean_spaces=False),
    KnownPreTokenizer("deepseek-v3", "DeepSeek V3, R1",
                      sequence(split("\\p{N}{1,3}"), split(DEEPSEEK_V3_CJK), split(DEEPSEEK_V3_WORDS),
                               byte_level(False)),
                      normalizer=None, ignore_merges=False, clean_spaces=False),
    # Punctuation runs, GPT-2 regex, digit runs, then digit triples. Checked: falcon vectors.
    KnownPreTokenizer("falcon", "Falcon 7B/40B/180B",
                      sequence({"type": "Punctuation", "behavior": "Contiguous"}, GPT2_BYTE_LEVEL, digits(False),
                               split("[0-9][0-9][0-9]")),
                      normalizer=None, ignore_merges=False, clean_spaces=True),
)

# Every tokenizer.ggml.pre value llama.cpp (commit 0c1e570) accepts; an explicit --pre-tokenizer must be one.
LLAMA_CPP_PRE_NAMES: frozenset[str] = frozenset({
    "a.x-4.0", "afmoe", "bailingmoe", "bailingmoe2", "bloom", "chameleon", "chatglm-bpe", "codeshell",
    "cohere2moe", "command-r", "dbrx", "deepseek-coder", "deepseek-llm", "deepseek-r1-qwen", "deepseek-v3",
    "default", "exaone", "exaone-moe", "exaone4", "f2llmv2", "falcon", "falcon-h1", "falcon3", "gemma4",
    "gigachat", "glm4", "glm5", "gpt-2", "gpt-4o", "gpt3-finnish", "granite-docling", "granite-embed-multi-311m",
    "granite-embed-multi-97m", "grok-2", "hunyuan", "hunyuan-dense", "hy_v4", "jais", "jais-2", "jina-de",
    "jina-es", "jina-v1-en", "jina-v2-code", "jina-v2-de", "jina-v2-es", "jina-v5-nano", "joyai-llm", "kanana2",
    "kimi-k2", "kormo", "laguna", "lfm2", "llada-moe", "llama-bpe", "llama-v3", "llama3", "llama4", "megrez",
    "mellum", "mellum2", "midm-2.0", "minerva-7b", "minicpm5", "minimax-m2", "modern-bert", "mpt", "olmo",
    "phi-2", "pixtral", "poro-chat", "qwen2", "qwen35", "refact", "roberta-bpe", "sarvam-moe", "seed-coder",
    "smaug-bpe", "smollm", "solar-open", "spark2_5", "stablelm2", "starcoder", "superbpe", "talkie", "tekken",
    "tiny_aya", "trillion", "ufakzeka", "viking", "whitespace", "youtu",
})
