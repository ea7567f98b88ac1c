"""What every tokenizer kind produces (an ExportedVocab) and the pieces the kinds share.

Token types are gguf.TokenType (llama.cpp's llama_token_type); the numbering is the same as SentencePiece's
piece types, so SentencePiece types pass through unchanged.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from gguf import TokenType

from quantcli.errors import InputError
from quantcli.io.gguf_metadata import MetaKV
from quantcli.models.tokenizer.files import TOKENIZER_CONFIG, TOKENIZER_JSON, TokenizerFiles

log = logging.getLogger(__name__)

# SentencePiece's word-boundary mark. llama.cpp matches user-defined tokens against the raw text, where the mark
# is a plain space, so user-defined tokens are written with spaces in its place.
SPACE_MARK = "\u2581"

# Added tokens that some models forget to flag as special although they are control tokens (pad of
# deepseek-coder, the mask tokens of Gemma); llama.cpp's converter treats them as control tokens too.
SPECIAL_LOOKING_TOKENS = frozenset({"<pad>", "<mask>", "<2mass>", "[@BOS@]"})
SPECIAL_LOOKING_BRACKETS = (("<|", "|>"), ("<\uff5c", "\uff5c>"), ("<unused", ">"))


def padding_token(token_id: int) -> str:
    """The filler text for an id the tokenizer leaves empty (config vocab_size larger than the tokenizer).

    Example:
        >>> padding_token(49152)
        '[PAD49152]'
    """
    return f"[PAD{token_id}]"


def looks_special(text: str) -> bool:
    """True for added-token texts that are control tokens by convention even when not flagged special.

    Example:
        >>> looks_special("<|im_start|>"), looks_special("<unused12>"), looks_special("hello")
        (True, True, False)
    """
    return text in SPECIAL_LOOKING_TOKENS or any(
        text.startswith(open_) and text.endswith(close) for open_, close in SPECIAL_LOOKING_BRACKETS
    )


@dataclass(frozen=True)
class AddedToken:
    """One added token (tokenizer.json added_tokens or tokenizer_config.json added_tokens_decoder)."""

    token_id: int
    content: str
    special: bool
    strips_space: bool = False  # lstrip/rstrip: transformers eats the whitespace beside it, llama.cpp does not

    @property
    def token_type(self) -> TokenType:
        return TokenType.CONTROL if self.special or looks_special(self.content) else TokenType.USER_DEFINED

    @property
    def gguf_text(self) -> str:
        """The text llama.cpp must hold: control tokens verbatim, user-defined ones with plain spaces."""
        if self.token_type == TokenType.CONTROL:
            return self.content
        return self.content.replace(SPACE_MARK, " ")


def added_tokens(files: TokenizerFiles) -> dict[int, AddedToken]:
    """Added tokens by id: tokenizer.json's list, then tokenizer_config.json's added_tokens_decoder for ids the
    former does not name (transformers merges the two the same way).

    Example:
        >>> added_tokens(files)[0].content  # doctest: +SKIP
        '<|endoftext|>'
    """
    found = {e["id"]: AddedToken(e["id"], e["content"], bool(e.get("special", False)),
                                 bool(e.get("lstrip") or e.get("rstrip")))
             for e in files.json_added_tokens}
    decoder = files.config.get("added_tokens_decoder") or {}
    if isinstance(decoder, dict):
        for key, entry in decoder.items():
            if not (isinstance(entry, dict) and isinstance(entry.get("content"), str)):
                continue
            try:
                token_id = int(key)
            except ValueError:
                continue
            found.setdefault(token_id, AddedToken(token_id, entry["content"], bool(entry.get("special", False)),
                                                  bool(entry.get("lstrip") or entry.get("rstrip"))))
    stripping = [t.content for t in found.values() if t.strips_space]
    if stripping:
        # llama.cpp has no per-token strip flags in GGUF (it sets them only for a few models by name).
        log.warning("%d added token(s) strip the whitespace next to them in transformers (%s), which llama.cpp "
                    "does not do; text around them may tokenize differently", len(stripping),
                    ", ".join(repr(t) for t in stripping[:3]) + (", ..." if len(stripping) > 3 else ""))
    return found


@dataclass(frozen=True)
class ExportedVocab:
    """A tokenizer in llama.cpp's terms, before it becomes GGUF metadata."""

    model: str                        # tokenizer.ggml.model: "llama", "gpt2" or "bert"
    pre: str                          # tokenizer.ggml.pre
    tokens: list[str]
    token_types: list[int]
    scores: list[float] | None = None  # SentencePiece only
    merges: list[str] | None = None    # BPE only, "left right" in rank order
    extra: tuple[MetaKV, ...] = field(default_factory=tuple)  # kind-specific keys (space prefix, type count)

def json_vocab(files: TokenizerFiles, vocab_size: int) -> tuple[list[str], list[int], dict[int, str]]:
    """Tokens and types of a tokenizer.json vocabulary padded to `vocab_size`, as llama.cpp's converter lays
    them out for BPE and WordPiece: model vocab, added tokens over it, [PAD{i}] (unused) for empty ids.
    A `vocab_size` of 0 means the tokenizer's own size.

    Also returns the model vocabulary by id (before added tokens), which WordPiece needs for its prefixes.

    Example:
        >>> tokens, types, _ = json_vocab(files, vocab_size=49152)  # doctest: +SKIP
        >>> tokens[0], types[0]  # doctest: +SKIP
        ('<|endoftext|>', 3)
    """
    model_vocab = files.json_model.get("vocab")
    if not isinstance(model_vocab, dict):
        raise InputError(
            f"{files.folder / TOKENIZER_JSON} has no model.vocab mapping.",
            hint="Download tokenizer.json again from the model's repository.",
        )
    by_id: dict[int, str] = {}
    for text, token_id in model_vocab.items():
        if isinstance(token_id, int):
            by_id[token_id] = text
    extra = added_tokens(files)
    largest = max([*by_id, *extra], default=-1)
    if vocab_size <= 0:  # the model did not say: the tokenizer's own size
        vocab_size = largest + 1
    if largest >= vocab_size:
        raise InputError(
            f"the tokenizer in {files.folder} uses token id {largest}, but the model's vocab_size is {vocab_size}.",
            hint=f"Check that config.json and {TOKENIZER_JSON}/{TOKENIZER_CONFIG} belong to the same model.",
        )
    # filled by id from the two maps rather than by asking both maps about every id: a 150k vocabulary is on
    # the conversion's serial path
    tokens: list[str | None] = [None] * vocab_size
    types = [int(TokenType.NORMAL)] * vocab_size
    for token_id, text in by_id.items():
        if token_id >= 0:
            tokens[token_id] = text
    for token_id, token in extra.items():
        if token_id >= 0:
            tokens[token_id] = token.gguf_text
            types[token_id] = int(token.token_type)
    if None in tokens:
        unused = int(TokenType.UNUSED)
        for token_id, text in enumerate(tokens):
            if text is None:
                tokens[token_id] = padding_token(token_id)
                types[token_id] = unused
    return tokens, types, by_id  # type: ignore[return-value]
