"""Byte-level BPE tokenizers (GPT-2 style) from tokenizer.json, as llama.cpp's "gpt2" tokenizer model."""
from __future__ import annotations

from typing import Any

from gguf import Keys

from quantcli.errors import InputError, UnsupportedError
from quantcli.io.gguf_metadata import kv_bool
from quantcli.models.tokenizer.files import TOKENIZER_JSON, TokenizerFiles
from quantcli.models.tokenizer.pretokenizer import check_name, detect_pre_tokenizer
from quantcli.models.tokenizer.vocab import ExportedVocab, json_vocab

GGUF_MODEL = "gpt2"
# GGUF merges are "left right" strings, so a space inside a part is written as the byte-level symbol for the
# space byte (U+0120), as llama.cpp's converter does for tokenizers that allow spaces in merges.
SPACE = " "
BYTE_LEVEL_SPACE = chr(ord(SPACE) + 256)


def merges(model: dict[str, Any], source: str) -> list[str]:
    """The merges of a BPE model section, oldest format ("a b") and newest ([a, b]) alike.

    Example:
        >>> merges({"merges": [["a", "b"], "c d"]}, "tokenizer.json")
        ['a b', 'c d']
    """
    found = model.get("merges") or []
    if not isinstance(found, list):
        raise InputError(f"{source} has a model.merges that is not a list.",
                         hint="Download tokenizer.json again from the model's repository.")
    out: list[str] = []
    append = out.append  # hundreds of thousands of entries: keep the loop lean
    for merge in found:
        if type(merge) is str:
            append(merge)
            continue
        if type(merge) is list and len(merge) == 2:
            left, right = merge
            if type(left) is str and type(right) is str:
                if SPACE in left:
                    left = left.replace(SPACE, BYTE_LEVEL_SPACE)
                if SPACE in right:
                    right = right.replace(SPACE, BYTE_LEVEL_SPACE)
                append(left + SPACE + right)
                continue
        raise InputError(f"{source} has a merge entry of an unknown form: {merge!r}.",
                         hint="Save the tokenizer again with a current `tokenizers` release.")
    return out


def check_byte_level(files: TokenizerFiles) -> None:
    """Refuse BPE flavours llama.cpp's gpt2 tokenizer cannot run, naming what to do instead."""
    source = str(files.folder / TOKENIZER_JSON)
    model = files.json_model
    # a byte-fallback BPE (SentencePiece style) never gets here: json_spm.py exports it as "llama"
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise UnsupportedError(f"{source} uses a BPE {key} ({model[key]!r}), which llama.cpp cannot run.")


def bpe_vocab(files: TokenizerFiles, vocab_size: int, pre_tokenizer: str | None) -> ExportedVocab:
    """Tokens, types, merges and pre-tokenizer name of a byte-level BPE tokenizer.json.

    `pre_tokenizer` overrides the detected name (it must be a name llama.cpp knows).

    Example:
        >>> v = bpe_vocab(TokenizerFiles.read(Path("models/SmolLM2-135M-Instruct")), 49152, None)  # doctest: +SKIP
        >>> v.model, v.pre, len(v.merges)  # doctest: +SKIP
        ('gpt2', 'smollm', 48900)
    """
    if files.tokenizer_json is None:
        raise files.missing_error()
    check_byte_level(files)
    source = str(files.folder / TOKENIZER_JSON)
    if pre_tokenizer is not None:
        pre = check_name(pre_tokenizer)
    else:
        pre = detect_pre_tokenizer(files.tokenizer_json, files.config, source)
    tokens, types, _ = json_vocab(files, vocab_size)
    # llama.cpp's BPE never prefixes a space; the flag only reaches its detokenizer. Written when the config
    # sets it, as llama.cpp's converter does for Llama-family models.
    prefix = files.config.get("add_prefix_space")
    extra = (kv_bool(Keys.Tokenizer.ADD_PREFIX, prefix),) if isinstance(prefix, bool) else ()
    return ExportedVocab(model=GGUF_MODEL, pre=pre, tokens=tokens, token_types=types,
                         merges=merges(files.json_model, source), extra=extra)
