"""SentencePiece-style tokenizers described by tokenizer.json alone (no tokenizer.model).

transformers 5 saves fast tokenizers only, so a Llama 2, Mistral or Gemma checkpoint saved with it carries a
byte-fallback BPE tokenizer.json (pieces marked with U+2581, <0xXX> byte pieces) and no tokenizer.model. llama.cpp
runs such a vocabulary with its "llama" (SentencePiece) tokenizer. That tokenizer merges adjacent pieces in order
of their scores, while the BPE model merges in order of its merge list, so the scores are rebuilt from the merge
list: a piece gets minus the rank of the first merge that produces it. Merging by these scores then picks, at
each step, the same pair BPE does (the one whose merge comes first). Pieces no merge produces (single
characters, byte pieces, special tokens) are never the result of a merge step, so their score only orders them
below every merged piece.

The result is the SentencePieceModel the tokenizer.model would have given, so spm.py exports it unchanged:
token types (byte pieces, the unknown piece, added tokens), padding to vocab_size and the space-prefix flag.
"""
from __future__ import annotations

import re
from typing import Any

from quantcli.errors import InputError
from quantcli.models.tokenizer.files import TOKENIZER_JSON, TokenizerFiles
from quantcli.models.tokenizer.sentencepiece_model import MODEL_TYPE_BPE, SentencePieceModel
from quantcli.models.tokenizer.spm import IDENTITY_NORMALIZER, PREPEND_NEVER, json_prepend_scheme

TYPE_NORMAL, TYPE_UNKNOWN, TYPE_BYTE = 1, 2, 6     # SentencePiece piece types, numbered as gguf.TokenType
BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def is_sentencepiece_bpe(files: TokenizerFiles) -> bool:
    """tokenizer.json holds a byte-fallback BPE: the SentencePiece flavour, not GPT-2's byte-level BPE."""
    model = files.json_model
    return files.tokenizer_json is not None and model.get("type") == "BPE" and bool(model.get("byte_fallback"))


def _merge_pair(merge: Any, source: str) -> tuple[str, str]:
    if isinstance(merge, str) and " " in merge:
        left, right = merge.split(" ", 1)
        return left, right
    if isinstance(merge, list) and len(merge) == 2 and all(isinstance(m, str) for m in merge):
        return merge[0], merge[1]
    raise InputError(f"{source} has a merge entry of an unknown form: {merge!r}.",
                     hint="Save the tokenizer again with a current `tokenizers` release.")


def sentencepiece_from_json(files: TokenizerFiles) -> SentencePieceModel:
    """The SentencePiece model a byte-fallback BPE tokenizer.json describes, with scores rebuilt from its merges."""
    source = str(files.folder / TOKENIZER_JSON)
    model = files.json_model
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not vocab:
        raise InputError(f"{source} has no model.vocab.", hint="Download tokenizer.json again from the model's repository.")
    by_id: dict[int, str] = {}
    for text, token_id in vocab.items():
        if not isinstance(token_id, int) or isinstance(token_id, bool) or not 0 <= token_id < 1 << 31:
            raise InputError(f"{source}: model.vocab[{text!r}] is {token_id!r}, not a token id.",
                             hint="Download tokenizer.json again from the model's repository.")
        if token_id in by_id:
            raise InputError(f"{source}: tokens {by_id[token_id]!r} and {text!r} share the id {token_id}.",
                             hint="Download tokenizer.json again from the model's repository.")
        by_id[token_id] = text
    merges = model.get("merges") or []
    if not isinstance(merges, list):
        raise InputError(f"{source} has a model.merges that is not a list.",
                         hint="Download tokenizer.json again from the model's repository.")
    scores: dict[str, float] = {}
    for rank, merge in enumerate(merges):
        left, right = _merge_pair(merge, source)
        scores.setdefault(left + right, -float(rank))
    unmerged = -float(len(merges))            # below every piece a merge produces
    unk = model.get("unk_token")
    texts: list[str] = []
    piece_scores: list[float] = []
    kinds: list[int] = []
    for token_id in range(max(by_id) + 1):
        text = by_id.get(token_id)
        if text is None:                      # a hole in the ids: spm.py pads it as an unused token
            texts.append(f"[PAD{token_id}]")
            piece_scores.append(unmerged)
            kinds.append(5)
            continue
        texts.append(text)
        piece_scores.append(scores.get(text, unmerged))
        kinds.append(TYPE_BYTE if BYTE_PIECE.fullmatch(text) else TYPE_UNKNOWN if text == unk else TYPE_NORMAL)
    prepend = json_prepend_scheme(files.tokenizer_json or {})
    return SentencePieceModel(texts=texts, scores=piece_scores, kinds=kinds, model_type=MODEL_TYPE_BPE, byte_fallback=True,
                              normalizer_name=IDENTITY_NORMALIZER, add_dummy_prefix=prepend != PREPEND_NEVER,
                              remove_extra_whitespaces=False)
