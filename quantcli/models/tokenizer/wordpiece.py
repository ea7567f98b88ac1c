"""WordPiece tokenizers (BERT) from tokenizer.json or vocab.txt, as llama.cpp's "bert" tokenizer model.

llama.cpp's WordPiece has no continuation prefix: a token that starts a word carries a leading U+2581 ("phantom
space") and a continuation piece is written bare, so "##ing" becomes "ing" and "play" becomes "\u2581play".
Control tokens ([CLS], [SEP], ...) keep their text.
"""
from __future__ import annotations

import logging
from typing import Any

from gguf import Keys, TokenType

from quantcli.errors import InputError, UnsupportedError
from quantcli.io.files import read_text
from quantcli.io.gguf_metadata import MetaKV, kv_bool, kv_u32
from quantcli.models.tokenizer.files import TOKENIZER_JSON, TokenizerFiles
from quantcli.models.tokenizer.pretokenizer import check_name
from quantcli.models.tokenizer.special import (
    NORMALIZER_LOWERCASE_KEY,
    NORMALIZER_STRIP_ACCENTS_KEY,
    token_text,
)
from quantcli.models.tokenizer.vocab import SPACE_MARK, ExportedVocab, json_vocab, padding_token

log = logging.getLogger(__name__)

GGUF_MODEL = "bert"
# llama.cpp ignores tokenizer.ggml.pre for WordPiece (its splitting is fixed), so the neutral name is written.
DEFAULT_PRE = "default"
DEFAULT_PREFIX = "##"
DEFAULT_TYPE_VOCAB_SIZE = 1  # BERT segment ids ("sentence A/B"); one when the config does not say
# llama.cpp's WordPiece always splits text as BERT does (whitespace, then punctuation and CJK characters alone).
BERT_PRE_TOKENIZER = "BertPreTokenizer"
ROLES_IN_CONFIG = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token", "bos_token", "eos_token")


def to_phantom_space(token: str, token_type: int, prefix: str) -> str:
    """llama.cpp's spelling of one WordPiece token.

    Example:
        >>> to_phantom_space("##ing", TokenType.NORMAL, "##"), to_phantom_space("[CLS]", TokenType.CONTROL, "##")
        ('ing', '[CLS]')
    """
    if token_type == TokenType.CONTROL:
        return token
    if prefix and token.startswith(prefix):
        return token[len(prefix):]
    return SPACE_MARK + token


def _vocab_txt(files: TokenizerFiles, vocab_size: int) -> tuple[list[str], list[int]]:
    """vocab.txt (one token per line, id = line number); the config's special tokens are control tokens."""
    if files.wordpiece_vocab is None:
        raise files.missing_error()
    lines = read_text(files.wordpiece_vocab, "vocab.txt").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise InputError(f"{files.wordpiece_vocab} is empty: a WordPiece vocabulary needs one token per line.",
                         hint="Copy vocab.txt from the model's original repository.")
    if vocab_size <= 0:
        vocab_size = len(lines)
    if len(lines) > vocab_size:
        raise InputError(
            f"{files.wordpiece_vocab} has {len(lines)} tokens, but the model's vocab_size is {vocab_size}.",
            hint="Check that config.json and vocab.txt belong to the same model.",
        )
    specials = {token_text(files.config.get(role)) for role in ROLES_IN_CONFIG} - {None}
    tokens = [line.rstrip("\r") for line in lines]
    types = [TokenType.CONTROL if t in specials else TokenType.NORMAL for t in tokens]
    for token_id in range(len(tokens), vocab_size):
        tokens.append(padding_token(token_id))
        types.append(TokenType.UNUSED)
    return tokens, types


def _vocab_txt_normalizer(files: TokenizerFiles) -> tuple[MetaKV, ...]:
    # Without tokenizer.json the BertTokenizer flags live in tokenizer_config.json.
    out = []
    lower = files.config.get("do_lower_case")
    if isinstance(lower, bool):
        out.append(kv_bool(NORMALIZER_LOWERCASE_KEY, lower))
    strip = files.config.get("strip_accents")
    if isinstance(strip, bool):
        out.append(kv_bool(NORMALIZER_STRIP_ACCENTS_KEY, strip))
    return tuple(out)


def wordpiece_vocab(files: TokenizerFiles, config: dict[str, Any], vocab_size: int,
                    pre_tokenizer: str | None) -> ExportedVocab:
    """Tokens and types of a WordPiece tokenizer in llama.cpp's phantom-space spelling.

    Example:
        >>> v = wordpiece_vocab(TokenizerFiles.read(Path("all-MiniLM-L6-v2")), config, 30522, None)  # doctest: +SKIP
        >>> v.tokens[101], v.tokens[2000]  # doctest: +SKIP
        ('[CLS]', '\u2581to')
    """
    pre = check_name(pre_tokenizer) if pre_tokenizer is not None else DEFAULT_PRE
    type_count = config.get("type_vocab_size", DEFAULT_TYPE_VOCAB_SIZE)
    extra: tuple[MetaKV, ...] = (kv_u32(Keys.Tokenizer.TOKEN_TYPE_COUNT, int(type_count)),)
    if files.tokenizer_json is not None:
        model = files.json_model
        if model.get("type") != "WordPiece":
            raise UnsupportedError(f"{files.folder / TOKENIZER_JSON} is a {model.get('type')} model, not WordPiece.")
        prefix = model.get("continuing_subword_prefix") or DEFAULT_PREFIX
        pre_step = files.tokenizer_json.get("pre_tokenizer")
        if not (isinstance(pre_step, dict) and pre_step.get("type") == BERT_PRE_TOKENIZER):
            log.warning("%s splits words with %r, but llama.cpp always splits as %s does; some text may "
                        "tokenize differently", files.folder / TOKENIZER_JSON, pre_step, BERT_PRE_TOKENIZER)
        tokens, types, _ = json_vocab(files, vocab_size)
    elif files.wordpiece_vocab is not None:
        prefix = DEFAULT_PREFIX
        tokens, types = _vocab_txt(files, vocab_size)
        extra += _vocab_txt_normalizer(files)
    else:
        raise files.missing_error()
    tokens = [to_phantom_space(t, k, prefix) for t, k in zip(tokens, types)]
    return ExportedVocab(model=GGUF_MODEL, pre=pre, tokens=tokens, token_types=types, extra=extra)
